"""Training metrics: one JSON line per logging step (RUN/metrics.jsonl), TensorBoard scalars and a
tqdm bar, on rank 0 only. Loss parts are summed on the device between logging steps; the values
arrive here already fetched (the logging step is the loop's host sync point)."""
from __future__ import annotations

import json
from pathlib import Path


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
            f.write(json.dumps(metrics) + "\n")
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
