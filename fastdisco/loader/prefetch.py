"""Prepare the next batches while the current step computes: a loader wrapper.

`Prefetched(loader, depth)` yields the same Batches in the same order as `loader`. On CUDA it
asks the loader for the next `depth` batches ahead of the caller, each under a side CUDA stream,
so their host-to-device copies and on-device augmentation overlap the step running on the
caller's stream. A batch is handed out after the caller's stream waits for that batch's own
event (not for the batches behind it), and its tensors are marked used on the caller's stream
(`record_stream`) so the caching allocator does not give their memory to the side stream again
while the step still reads them.

Position: the loader counts a batch as consumed when it hands it to us, which is up to `depth`
batches ahead of the caller. `state_dict()` is the position of the batches the caller got, and
a pass left early puts the loader back there (its backends restart exactly from any (epoch,
batch): every batch's samples and augmentation are keyed by it), so stop / resume stays exact.
Without CUDA it reads nothing ahead (unless `read_ahead=True`, which tests use to check that the
bookkeeping above is exact): a plain pass-through.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator

import torch

from fastdisco.loader.base import BaseLoader, Batch


def _tensors(batch: Batch):
    yield from batch.views
    yield from (batch.labels, batch.indices, batch.valid)


class Prefetched:
    """`loader`, read `depth` batches ahead on a side CUDA stream (see the module docstring)."""

    def __init__(self, loader: BaseLoader, depth: int = 1, read_ahead: bool | None = None):
        self.loader = loader
        self.depth = max(0, int(depth))
        cuda = loader.device.type == "cuda"
        self.read_ahead = (cuda if read_ahead is None else read_ahead) and self.depth > 0
        self.streams = cuda and self.read_ahead
        self._pos: dict | None = None  # position after the last batch handed to the caller in this pass

    # ------------------------------------------------------------------ the loader contract
    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):  # device, dtype, num_views, num_classes, plan, ... of the loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def set_epoch(self, epoch: int) -> None:
        self._settle()
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict:
        # as the loader says it after handing out a batch ({"epoch": e, "batch": len} after the last)
        return self.loader.state_dict() if self._pos is None else dict(self._pos)

    def load_state_dict(self, state: dict) -> None:
        self._pos = None
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self._pos = None
        self.loader.close()

    def __enter__(self) -> "Prefetched":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ iteration
    def _normalised(self, pos: dict) -> dict:
        e, b = pos["epoch"], pos["batch"]
        return {"epoch": e + 1, "batch": 0} if b >= len(self.loader) else {"epoch": e, "batch": b}

    def _settle(self) -> None:
        """Put the loader back at the caller's position if it read ahead of it."""
        if self._pos is not None:
            pos, self._pos = self._normalised(self._pos), None
            if self.loader.state_dict() != pos:
                self.loader.load_state_dict(pos)

    def __iter__(self) -> Iterator[Batch]:
        self._settle()
        if not self.read_ahead:
            yield from self.loader
            return
        it = iter(self.loader)
        side = torch.cuda.Stream(device=self.loader.device) if self.streams else None
        ahead: deque = deque()

        def fetch() -> bool:
            if side is None:
                b = next(it, None)
                ev = None
            else:
                side.wait_stream(torch.cuda.current_stream(self.loader.device))  # inputs the caller made
                with torch.cuda.stream(side):
                    b = next(it, None)
                    ev = torch.cuda.Event() if b is not None else None
                    if ev is not None:
                        ev.record(side)
            if b is None:
                return False
            ahead.append((b, ev, dict(self.loader.state_dict())))
            return True

        self._pos = dict(self.loader.state_dict())
        try:
            while len(ahead) < self.depth and fetch():
                pass
            while ahead:
                b, ev, pos = ahead.popleft()
                if ev is not None:
                    cur = torch.cuda.current_stream(self.loader.device)
                    cur.wait_event(ev)
                    for t in _tensors(b):
                        if t is not None and t.is_cuda:
                            t.record_stream(cur)
                fetch()  # the next one starts before the caller's step
                self._pos = pos
                yield b
            self._pos = None  # the pass ended: the loader's own position (next epoch) holds
        finally:
            if self._pos is not None:  # left early: the loader read ahead of the caller
                it.close()
                self._settle()
