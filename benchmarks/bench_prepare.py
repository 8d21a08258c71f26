"""Throughput of `prepare-data` against the per-core bound of decode + resize + encode.

Writes N synthetic ImageNet-like JPEGs (500x375 by default), then measures in one run:
  bound_per_core  images/s of images.convert() on in-memory bytes in this process (the work
                  each input needs, without file reads, tar writing or process overheads);
  prepare_dali    images/s of prepare_dataset(formats="dali") with W workers;
  prepare_both    images/s of prepare_dataset(formats="ffcv,dali") (adds the .beton pass);
and reports efficiency = prepare / (bound_per_core * W). Rows go to
benchmarks/results/prepare.jsonl (results_io.append_rows).

  .venv/bin/python benchmarks/bench_prepare.py --images 400 --workers 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results_io import append_rows  # noqa: E402
from fastdisco.dataset import images  # noqa: E402
from fastdisco.dataset.prepare import prepare_dataset  # noqa: E402
from fastdisco.dataset.recipes.synthetic import make_image  # noqa: E402


def write_inputs(root: Path, n: int, w: int, h: int, classes: int = 10) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(n):
        d = root / f"c{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:06d}.jpg"
        Image.fromarray(make_image(i % classes, i, (h, w), num_classes=classes)).save(p, quality=90)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-ffcv", action="store_true", help="skip the ffcv,dali measurement")
    ap.add_argument("--results-dir", default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        paths = write_inputs(tmp / "src", args.images, args.width, args.height)
        blobs = [p.read_bytes() for p in paths]
        images.convert(blobs[0], args.max_side, args.quality)  # warm-up
        t = time.perf_counter()
        for b in blobs:
            images.convert(b, args.max_side, args.quality)
        per_core = len(blobs) / (time.perf_counter() - t)
        bound = per_core * args.workers

        if not args.no_ffcv:
            import fastdisco.dataset.beton  # noqa: F401  (ffcv's ~5 s import is not throughput)
        common = dict(images=args.images, size=f"{args.width}x{args.height}", max_side=args.max_side,
                      quality=args.quality, workers=args.workers, cpu_count=os.cpu_count())
        rows = [{**common, "measure": "bound_per_core", "images_per_s": round(per_core, 1)}]
        runs = [("prepare_dali", "dali")] + ([] if args.no_ffcv else [("prepare_both", "ffcv,dali")])
        for name, formats in runs:
            out = tmp / name
            t = time.perf_counter()
            prepare_dataset(tmp / "src", out, formats=formats, max_side=args.max_side, quality=args.quality,
                            workers=args.workers, shard_size=250, min_per_worker=1, ffcv_workers=args.workers)
            ips = args.images / (time.perf_counter() - t)
            rows.append({**common, "measure": name, "images_per_s": round(ips, 1),
                         "bound_images_per_s": round(bound, 1), "efficiency": round(ips / bound, 3)})
        path = append_rows("prepare", rows, args.results_dir)
        for r in rows:
            extra = f"  ({r['efficiency']:.0%} of {r['bound_images_per_s']} img/s bound)" if "efficiency" in r else ""
            print(f"{r['measure']:>15}: {r['images_per_s']:8.1f} img/s{extra}")
        print(f"rows appended to {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
