"""Training metrics: one JSON line per logging step (RUN/metrics.jsonl), TensorBoard scalars and a
tqdm bar, on rank 0 only. Loss parts are summed on the device between logging steps; the values
arrive here already fetched (the logging step is the loop's host sync point).

metrics.jsonl is strict JSON (RFC 8259, which has no NaN / Infinity): a non-finite value is written
as null and its key listed in "nonfinite" (e.g. {"loss": null, "nonfinite": ["loss"]});
TensorBoard gets the raw value."""
from __future__ import annotations

import json
import math
from pathlib import Path


def strict_json_row(metrics: dict) -> str:
    """One metrics line: non-finite floats become null, their keys listed under "nonfinite"."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    row = {k: (None if k in bad else v) for k, v in metrics.items()}
    if bad:
        row["nonfinite"] = bad
    return json.dumps(row, allow_nan=False)


class MetricsLogger:
    def __init__(self, run: Path, *, enabled: bool, tensorboard: bool, progress: bool, total: int, start: int,
                 desc: str):
        self.run, self.enabled = run, enabled
        self.writer = self.bar = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run / "tb"))
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc=desc)

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.run / "metrics.jsonl", "a") as f:
            f.write(strict_json_row(metrics) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                if k not in ("step", "epoch"):
                    self.writer.add_scalar(f"train/{k}", v, metrics["step"])
        if self.bar is not None:
            self.bar.update(metrics["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
