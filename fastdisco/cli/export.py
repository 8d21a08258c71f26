"""`fastdisco export RUN OUT.safetensors`: the deployable student -- its timm backbone only.

DisCo's point is "no extra parameters at deployment": the projection head, momentum encoder,
queue and teacher stay behind. RUN is a run directory (its checkpoints/last.pt) or a checkpoint
file. For OUT.safetensors it writes:

  OUT.safetensors   the timm model's own state dict
  OUT.json          sidecar: model, num_classes, input size, mean/std, source checkpoint, provenance
  OUT/              (OUT.safetensors minus the suffix) a Hugging Face-style folder in the
                    layout of timm's save_for_hf / push_to_hub:
                    config.json, model.safetensors, README.md (model card: teacher, method,
                    data, steps, eval numbers from RUN/eval/*.json, provenance);
                    --hf-dir DIR puts it elsewhere, --no-hf-dir skips it

Both load with strict keys and no network access:

    timm.create_model("local-dir:OUT", pretrained=True)     # the folder (pretrained=True loads
                                                            # its weights; without it: random init)
    timm.create_model(NAME, pretrained=True,
                      pretrained_cfg_overlay=dict(file="OUT.safetensors", num_classes=K))

K is the exported classifier size (0 for DisCo / MoCo students, which have none); it must be in
the overlay, not a `num_classes=` keyword, or timm drops the classifier and loads non-strictly.
The folder's config.json carries it, so its one line needs nothing else. The folder is what
timm's push_to_hub uploads (config.json + model.safetensors + README.md).

After writing, both are checked: timm loads each with exactly that call and gives the same
outputs as the checkpoint's backbone (--no-verify skips it). --onnx OUT.onnx also writes an ONNX
graph and checks it against PyTorch (needs the onnx extra: pip install 'fastdisco[onnx]').
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="RUN",
                   help="run directory (uses RUN/checkpoints/last.pt) or a fastdisco checkpoint (.pt)")
    p.add_argument("out", metavar="OUT.safetensors",
                   help="output weights file; OUT.json and the folder OUT/ are written next to it")
    hf = p.add_mutually_exclusive_group()
    hf.add_argument("--hf-dir", metavar="DIR", default=None,
                    help="where to write the Hugging Face-style folder (default: OUT without .safetensors)")
    hf.add_argument("--no-hf-dir", action="store_true", help="do not write the folder")
    p.add_argument("--onnx", metavar="OUT.onnx", default=None, help="also export ONNX and check it against PyTorch")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size recorded in the sidecar / config.json and used for checks "
                        "(default: the run's data.resolution)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--atol", type=float, default=1e-4, help="tolerance of the ONNX-vs-PyTorch check")
    p.add_argument("--no-verify", action="store_true", help="skip the timm reload checks")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fastdisco.errors import UsageError

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"OUT must end in .safetensors, got {out}")
    from fastdisco.export import export_onnx, export_student

    hf_dir = False if args.no_hf_dir else (args.hf_dir or None)
    info = export_student(args.ckpt, out, hf_dir=hf_dir, resolution=args.resolution, verify=not args.no_verify)
    print(f"wrote {out} ({info['num_params']:,} parameters, {info['model']}, num_classes={info['num_classes']}) "
          f"and {out.with_suffix('.json')}")
    print(f"load with: {info['load']}")
    if info.get("hf_dir"):
        print(f"wrote {info['hf_dir']}/ (config.json, model.safetensors, README.md)")
        print(f"load with: {info['hf_load']}")
    if args.onnx:
        err = export_onnx(out, args.onnx, opset=args.opset, atol=args.atol)
        print(f"wrote {args.onnx} (max |onnx - torch| = {err:.2e})")
    return 0
