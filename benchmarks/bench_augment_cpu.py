"""Per-view cost of the CPU augmentation path on one core: the torch ops (augment.color_one +
addcmul, one full-image pass per op) beside the fused numba kernel (augment_fused), forced in
turn with augment.set_cpu_kernel.

Cases (every op of a case fires on every image; sigma and jitter factors drawn as in byol):
  all       jitter (4 ops, drawn order), grayscale, blur, solarize, flip, normalise
  jitter    the 4 jitter ops, normalise
  blur      blur, normalise
  normalise nothing but clamp / 255 and normalise
each timed on the crops the loaders hand over: `u8_nhwc` (dali / ffcv: uint8 NHWC views,
through augment.photometric_cpu) and `f32` (float crops [0, 255], planar: crop_one's float output),
and, for the whole pipeline, `pipeline` (augment.augment_cpu with crop_u8=True on 320x240
uint8 sources: the torch loader's worker path, crop + resize included).

Time per view = median over --repeats of (one batch of --batch views, images one after
another on one thread) / batch, the two kernels alternating; torch runs with 1 thread, as in
the loaders' pools. One float32 channels_last output batch is reused (photometric_cpu(out=),
augment_cpu(outs=)), as in the torch loader's shared slots. Rows go
to benchmarks/results/augment_cpu.jsonl (results_io.append_rows), wall clock: on a shared
machine compare the two kernels within one run.

    .venv/bin/python benchmarks/bench_augment_cpu.py --batch 64 --repeats 7
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.results_io import append_rows  # noqa: E402
from fastdisco import augment as A  # noqa: E402

CASES = {
    "all": ("jitter", "gray", "blur", "solarize", "flip"),
    "jitter": ("jitter",),
    "blur": ("blur",),
    "normalise": (),
}


def _params(g: torch.Generator, B: int, res: int, on: tuple[str, ...], h: int, w: int) -> dict:
    (p,) = A.sample_params(g, A.RECIPES["byol"][1:], torch.full((B,), h), torch.full((B,), w), res)
    for k in ("jitter", "gray", "blur", "solarize", "flip"):
        p[k][:] = k in on
    return p


def _time_both(fn, repeats: int) -> dict[str, float]:
    """Median seconds of fn() under each kernel, the two alternating (drift on a shared machine
    hits both alike); one untimed call each first (the fused kernel's compile / cache load)."""
    ts: dict[str, list[float]] = {"torch": [], "fused": []}
    for r in range(repeats + 1):
        for kernel in ts:
            A.set_cpu_kernel(kernel)
            t = time.perf_counter()
            fn()
            if r:
                ts[kernel].append(time.perf_counter() - t)
    A.set_cpu_kernel("fused")
    return {k: statistics.median(v) for k, v in ts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-save", action="store_true", help="print only, append no rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import numba  # noqa: PLC0415  (the stamp's version list lacks it)

    numba_version = numba.__version__
    B, res = args.batch, args.resolution
    g = torch.Generator().manual_seed(0)
    crops_u8 = (torch.rand(B, res, res, 3, generator=g) * 255).to(torch.uint8).permute(0, 3, 1, 2)
    crops_f32 = crops_u8.contiguous().float()
    src = (torch.rand(B, 3, 240, 320, generator=g) * 255).to(torch.uint8)
    # one output batch, reused, as the torch loader's shared slots: a new batch per call would
    # add its page faults (~0.3 ms per view here, the same for both kernels) to every figure
    out = torch.empty(B, 3, res, res).contiguous(memory_format=torch.channels_last)
    rows = []
    for case, on in CASES.items():
        p = _params(g, B, res, on, res, res)
        p_src = _params(g, B, res, on, 240, 320)
        inputs = {
            "u8_nhwc": lambda: A.photometric_cpu(crops_u8, p, res, torch.float32, out=out),
            "f32": lambda: A.photometric_cpu(crops_f32, p, res, torch.float32, out=out),
            "pipeline": lambda: A.augment_cpu(src, [p_src], res, torch.float32, crop_u8=True, outs=[out]),
        }
        for name, fn in inputs.items():
            ms = {k: v / B * 1e3 for k, v in _time_both(fn, args.repeats).items()}
            row = dict(case=case, input=name, resolution=res, batch=B, threads=1, timer="wall", numba=numba_version,
                       torch_ms_per_view=round(ms["torch"], 4), fused_ms_per_view=round(ms["fused"], 4),
                       speedup=round(ms["torch"] / ms["fused"], 2))
            print(f"{case:10s} {name:9s} torch {ms['torch']:.3f} ms  fused {ms['fused']:.3f} ms  "
                  f"x{row['speedup']:.2f}", flush=True)
            rows.append(row)
    if not args.no_save:
        print("appended to", append_rows("augment_cpu", rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
