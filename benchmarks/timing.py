"""Side-by-side timing shared by the micro-benchmarks: the variants of one comparison run
interleaved, round after round, so a load change on a shared machine hits them alike."""
from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a timer brackets the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each fn over `repeats` interleaved rounds, after one untimed
    warm-up round (allocator, autotuning, caches)."""
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if r:
                ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}
