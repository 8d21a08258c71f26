"""`fastdisco convert-teacher --from paddle IN.pdparams OUT`: turn a teacher published for
another framework into a timm state dict that `model.teacher_ckpt` (teacher_format timm) reads.

  --from paddle   PaddleClas ResNet50_vd parameters (e.g. ResNet50_vd_ssld, SSLD's teacher for
                  MobileNet students) -> timm `resnet50d`. The .pdparams pickle is read without
                  executing code (only numpy arrays are rebuilt); every name and shape is checked.

OUT ending in .safetensors is written as safetensors, anything else as a torch file of the plain
state dict (both load with weights_only). Then train with
`--set model.teacher=resnet50d model.teacher_format=timm model.teacher_ckpt=OUT`.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="IN", help="the teacher's parameter file (.pdparams for --from paddle)")
    p.add_argument("out", metavar="OUT", help="output: .safetensors, or a torch file (e.g. .pt)")
    p.add_argument("--from", dest="source_format", required=True, choices=("paddle",),
                   help="the framework / layout of IN")
    p.add_argument("--model", default="resnet50d", choices=("resnet50d",),
                   help="timm architecture of the result (PaddleClas ResNet50_vd = timm resnet50d)")


def main(args: argparse.Namespace) -> int:
    from fastdisco.models.paddle_convert import convert_file

    info = convert_file(args.src, args.out, args.model)
    print(f"fastdisco convert-teacher: {args.src} ({info['scheme']} Paddle names, {info['arrays']} arrays) -> "
          f"{info['out']} (timm {info['model']}, {info['keys']} keys, {info['num_classes']} classes)")
    return 0
