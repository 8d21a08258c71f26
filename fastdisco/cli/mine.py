"""`fastdisco mine POOL OUT --teacher NAME --teacher-ckpt FILE --top-k K`: SSLD's unlabeled-data
selection (fastdisco.mine): the teacher scores a prepared pool, near-duplicates of the eval set are
dropped, the top-k most confident images per predicted class are kept. Resumable.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool", help="prepared dataset directory holding the unlabeled pool")
    p.add_argument("out", help="output directory (filelist.txt, images/, selected.csv, mine.json, scores/)")
    p.add_argument("--config", help="YAML recipe; its model section names the teacher")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. model.teacher=resnet50")
    p.add_argument("--teacher", help="timm name of the teacher (= --set model.teacher=...)")
    p.add_argument("--teacher-ckpt", help="local teacher checkpoint with a classifier (= model.teacher_ckpt)")
    p.add_argument("--teacher-format", help="checkpoint format (= model.teacher_format; default auto)")
    p.add_argument("--teacher-bn", choices=("eval", "train"), default="eval",
                   help="teacher BN mode while scoring (default eval: scores independent of the batch)")
    p.add_argument("--top-k", type=int, required=True, help="images kept per predicted class")
    p.add_argument("--min-confidence", type=float, default=0.0, help="drop images the teacher is less sure of")
    p.add_argument("--eval-set", action="append", default=[], metavar="DIR",
                   help="evaluation set whose near-duplicates are removed (prepared dataset or image folder; repeatable)")
    p.add_argument("--hash-distance", type=int, default=6,
                   help="max Hamming distance (of 64 pHash bits) that counts as a near-duplicate (default 6: random pairs reach it with p ~ 5e-12)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875, help="resize to resolution/crop_pct, then center crop")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=2048, help="images per saved chunk of scores (resume unit)")
    p.add_argument("--workers", type=int, default=4, help="decode threads")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-labels", action="store_true", help="write paths only to filelist.txt")
    p.add_argument("--fresh", action="store_true", help="discard saved scores and score the pool again")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    import torch

    from fastdisco.config import build_config
    from fastdisco.errors import FastdiscoError
    from fastdisco.mine import check_settings, refuse_out, run_mine
    from fastdisco.models.teacher import load_teacher

    # the command line and OUT first: no teacher is loaded for a run that cannot start
    check_settings(top_k=args.top_k, hash_distance=args.hash_distance, min_confidence=args.min_confidence,
                   chunk_size=args.chunk_size, batch_size=args.batch_size, resolution=args.resolution,
                   crop_pct=args.crop_pct)
    refuse_out(args.out)
    if args.teacher_ckpt and Path(args.teacher_ckpt).is_dir():
        raise FastdiscoError(f"--teacher-ckpt {args.teacher_ckpt} is a directory, not a checkpoint file")
    sets = list(args.set)
    for flag, key in (("teacher", "teacher"), ("teacher_ckpt", "teacher_ckpt"), ("teacher_format", "teacher_format")):
        if getattr(args, flag):
            sets.append(f"model.{key}={getattr(args, flag)}")
    sets.append(f"model.teacher_bn={args.teacher_bn}")
    cfg = build_config(args.config, sets)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    teacher = load_teacher(cfg.model, output="logits", device=device, channels_last=device.type == "cuda")

    def scorer(x):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return teacher(x)
        return teacher(x)

    ckpt = Path(cfg.model.teacher_ckpt)
    meta = {"teacher": teacher.name, "teacher_ckpt": str(ckpt.resolve()), "teacher_ckpt_bytes": ckpt.stat().st_size,
            "teacher_format": teacher.format, "teacher_bn": cfg.model.teacher_bn}
    summary = run_mine(args.pool, args.out, scorer, top_k=args.top_k, meta=meta, eval_sets=args.eval_set,
                       hash_distance=args.hash_distance, min_confidence=args.min_confidence,
                       labels=not args.no_labels, chunk_size=args.chunk_size, batch_size=args.batch_size,
                       resolution=args.resolution, crop_pct=args.crop_pct, workers=args.workers,
                       fresh=args.fresh, progress=not args.no_progress)
    print(f"mine: kept {summary['num_selected']} of {summary['num_pool']} images "
          f"({summary['num_near_duplicates']} near-duplicates of the eval set removed) -> "
          f"{Path(args.out) / 'filelist.txt'}")
    return 0
