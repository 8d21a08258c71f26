"""`fastdisco prepare-data [SRC] OUT`: raw images -> FFCV .beton + DALI webdataset shards.

Examples:
  fastdisco prepare-data ~/photos/train data/train              # class folders (or a flat folder)
  fastdisco prepare-data list.csv data/x --format dali          # `path[,label]` lines
  fastdisco prepare-data --dataset fashion-mnist --split test data/fm-test
  fastdisco prepare-data --dataset imagenet100 --split val /datasets/imagenet data/in100-val
  # SLURM array: --array=0-7 runs the parts, then one dependent job merges
  fastdisco prepare-data /datasets/imagenet/train data/in1k --part $SLURM_ARRAY_TASK_ID/8
  fastdisco prepare-data /datasets/imagenet/train data/in1k --merge
"""
from __future__ import annotations

import argparse
import os

NO_SRC_DATASETS = ("fashion-mnist", "synthetic")  # SRC optional for these


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description, examples = __doc__.split("Examples:", 1)
    p.epilog = "Examples:" + examples
    p.add_argument("paths", nargs="+", metavar="[SRC] OUT",
                   help="SRC: class-folder tree, flat folder, or .txt/.csv list of `path[,label]` "
                        "(optional for --dataset fashion-mnist|synthetic); OUT: output folder")
    p.add_argument("--dataset", choices=["imagenet", "imagenet100", "fashion-mnist", "synthetic"],
                   help="named recipe (datasets/): SRC is then the dataset's root")
    p.add_argument("--split", help="train | val (imagenet*) | test (fashion-mnist)")
    p.add_argument("--val-labels", help="ImageNet flat val: LOC_val_solution.csv or 'filename wnid' lines")
    p.add_argument("--limit", type=int, help="keep only the first N inputs (deterministic order)")
    p.add_argument("--num-classes", type=int, help="synthetic: number of classes (10)")
    p.add_argument("--per-class", type=int, help="synthetic: images per class (100)")
    p.add_argument("--image-size", type=int, help="synthetic: image side in pixels (64)")
    p.add_argument("--seed", type=int, help="synthetic: seed (0)")
    p.add_argument("--format", default="ffcv,dali", help="ffcv, dali or ffcv,dali (default)")
    p.add_argument("--max-side", type=int, default=512, help="cap on the longest side in pixels (512)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100 (90)")
    p.add_argument("--shard-size", type=int, default=1000, help="inputs per webdataset shard (1000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="conversion processes (all cores)")
    p.add_argument("--part", help="i/n: convert only part i of n (0-based), e.g. for a SLURM array")
    p.add_argument("--merge", action="store_true", help="after all --part runs: finish OUT (manifest, .beton)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.errors import UsageError

    if len(args.paths) > 2:
        raise UsageError(f"expected [SRC] OUT, got {len(args.paths)} paths")
    if len(args.paths) == 1 and args.dataset not in NO_SRC_DATASETS:
        raise UsageError("missing SRC: usage is `fastdisco prepare-data SRC OUT` "
                             "(SRC is optional only with --dataset fashion-mnist|synthetic)")
    src, out = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    options = {"split": args.split, "val_labels": args.val_labels, "num_classes": args.num_classes,
               "per_class": args.per_class, "image_size": args.image_size, "seed": args.seed}
    result = prepare_dataset(
        src, out, formats=args.format, max_side=args.max_side, quality=args.quality,
        workers=args.workers, shard_size=args.shard_size, part=args.part, merge=args.merge,
        dataset=args.dataset, dataset_options=options, limit=args.limit, progress=not args.no_progress)
    if "part" in result:
        print(f"part {result['part']}/{result['num_parts']}: {result['num_samples']} images, "
              f"{result['skipped']} skipped; when all {result['num_parts']} parts are done, run the same "
              f"command with --merge instead of --part")
        return 0
    what = []
    if result["ffcv"]:
        what.append(f"ffcv {result['ffcv']['path']}")
    if result["shards"]:
        what.append(f"dali {len(result['shards'])} shards")
    print(f"prepared {result['num_samples']} images ({result['num_classes']} classes, "
          f"{result['skipped']} skipped -> {os.path.join(out, 'skipped.tsv')}) in {out}: {', '.join(what)}")
    return 0
