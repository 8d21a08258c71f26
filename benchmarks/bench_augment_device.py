"""The batched colour path (augment.color_view: one packed plan per view, masked / sliced ops)
beside the per-op gather / scatter implementation it replaced (kept as the reference in
tests/test_augment_masked.py), on the same batch and the same draws, alternating.

Cases: `drawn` (byol's second view with its own rates: jitter 0.8, gray 0.2, blur 0.1,
solarize 0.2, flip 0.5) and `all` (every op fires on every sample); `crop_resize`: the view's
geometry, a per-sample antialiased interpolate loop vs one batched crop + resize (two matmuls). Time per batch = median
over --repeats; on CUDA each call is synchronised. Rows go to benchmarks/results/augment_device.jsonl
(results_io.append_rows); on the CPU the rows say so (device "cpu"): the GPU ratio is the one
that matters (16 index copies from the host per view are gone there), the CPU one shows the
op count.

    .venv/bin/python benchmarks/bench_augment_device.py --batch 64 --resolution 112 --repeats 7
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from benchmarks.results_io import append_rows  # noqa: E402
from benchmarks.timing import time_interleaved  # noqa: E402
from fastdisco import augment as A  # noqa: E402
from test_augment_masked import old_color_view  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=112)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-save", action="store_true", help="print only, append no rows")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    B, res = args.batch, args.resolution
    g = torch.Generator().manual_seed(0)
    x_nchw = torch.rand(B, 3, res, res, generator=g).to(device)
    rows = []
    # nchw: the torch loader's crops (crop_view); channels_last: dali / ffcv's NHWC crops as floats
    for case, layout in (("drawn", "nchw"), ("all", "nchw"), ("drawn", "channels_last"), ("all", "channels_last")):
        x = x_nchw if layout == "nchw" else x_nchw.contiguous(memory_format=torch.channels_last)
        (p,) = A.sample_params(g, A.RECIPES["byol"][1:], torch.full((B,), 256), torch.full((B,), 256), res)
        if case == "all":
            for k in ("jitter", "gray", "blur", "solarize", "flip"):
                p[k][:] = True
        fns = {"old": lambda: old_color_view(x.clone(), p, res), "new": lambda: A.color_view(x.clone(), p, res)}
        ms = {k: v * 1e3 for k, v in time_interleaved(fns, args.repeats, device).items()}
        row = dict(bench="augment_device", case=case, layout=layout, batch=B, resolution=res, device=device.type,
                   threads=torch.get_num_threads(), timer="wall", old_ms=round(ms["old"], 3), new_ms=round(ms["new"], 3),
                   speedup=round(ms["old"] / ms["new"], 2))
        print(f"{device.type} {case:6s} {layout:13s} old {ms['old']:.2f} ms  new {ms['new']:.2f} ms  x{row['speedup']:.2f}", flush=True)
        rows.append(row)
    # the geometry of one view: a per-sample interpolate loop (the old crop_view) vs one batched
    # crop + resize (ops.resized_crop_matmul), on uint8 sources of 375 x 500 (ImageNet's typical size)
    from fastdisco.augment import ops

    src = (torch.rand(B, 3, 375, 500, generator=g) * 255).to(torch.uint8).to(device)
    (p,) = A.sample_params(g, A.RECIPES["byol"][1:], torch.full((B,), 375), torch.full((B,), 500), res)
    fns = {"old": lambda: ops.resized_crop(src, p["crop"], res), "new": lambda: ops.resized_crop_matmul(src, p, res)}
    ms = {k: v * 1e3 for k, v in time_interleaved(fns, args.repeats, device).items()}
    row = dict(bench="augment_device", case="crop_resize", layout="nchw", batch=B, resolution=res, device=device.type,
               threads=torch.get_num_threads(), timer="wall", old_ms=round(ms["old"], 3), new_ms=round(ms["new"], 3),
               speedup=round(ms["old"] / ms["new"], 2))
    print(f"{device.type} crop_resize   old {ms['old']:.2f} ms  new {ms['new']:.2f} ms  x{row['speedup']:.2f}", flush=True)
    rows.append(row)
    if not args.no_save:
        print("appended to", append_rows("augment_device", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
