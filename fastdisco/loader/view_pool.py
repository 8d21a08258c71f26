"""Reusable output batches: shared ones that DataLoader workers write into, and plain ones for the
CPU loaders that finish views in the main process (dali, ffcv, torch without workers).

Without this, a worker puts every batch it makes into fresh shared memory (as default_collate
does): for two float32 224 px views of 32 images that is 38 MB to allocate, zero and fault in
per batch, ~40 ms, about a fifth of a CPU worker's time. Sending a reused buffer back and forth
does not help: each storage crossing a process boundary costs a file-descriptor hand-over
(a socket connection with authentication), ~4 ms each.

So the main process allocates a fixed number of output batches ("slots") *before* the workers
start; the workers inherit them (fork; under spawn they arrive once, with the dataset). A task
names a free slot by its number, the worker writes the views into that slot, and only the
number comes back. The main process hands out new tensors on the slot's storage.

A slot is free when it is not in flight and no tensor outside the pool still uses its storage
(the storage's reference count), so a batch the caller keeps, or a view of it, is never
overwritten. When no slot is free the task carries none and the worker allocates as usual.
Where this torch lacks the reference count, `available()` is False and the loader does not use
a pool. The same bookkeeping serves the in-process CPU loaders (shared=False): a fresh float32
224 px view is 600 KB of new pages whose first-touch faults cost about as much as its fused
colour ops, so they too write into batches the caller has let go of.
"""
from __future__ import annotations

import torch
from torch import Tensor

NO_SLOT = -1


def available() -> bool:
    return hasattr(torch._C, "_storage_Use_Count")


def _use_count(t: Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def _new(shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype, shared: bool) -> Tensor:
    t = torch.empty_strided(shape, stride, dtype=dtype)
    return t.share_memory_() if shared else t


class ViewPool:
    """`slots` batches of `views` tensors of `shape` / `stride` / `dtype`, in shared memory if `shared`."""

    def __init__(self, slots: int, views: int, shape: tuple[int, ...], stride: tuple[int, ...],
                 dtype: torch.dtype, shared: bool = True):
        self.slots = [[_new(shape, stride, dtype, shared) for _ in range(views)] for _ in range(slots)]
        # each tensor's storage use count while only the pool holds it
        self._idle = [[_use_count(t) for t in ts] for ts in self.slots]
        self._in_flight: set[int] = set()

    @classmethod
    def of_views(cls, slots: int, views: int, batch: int, resolution: int, dtype: torch.dtype,
                 channels_last: bool, shared: bool = True) -> "ViewPool":
        """Slots shaped like a loader's output views: [batch, 3, res, res], channels_last or not."""
        hw = resolution * resolution
        stride = (3 * hw, 1, 3 * resolution, 3) if channels_last else (3 * hw, hw, resolution, 1)
        return cls(slots, views, (batch, 3, resolution, resolution), stride, dtype, shared)

    def __len__(self) -> int:
        return len(self.slots)

    def __getstate__(self):  # the main process's bookkeeping stays there; workers only write slots
        return {"slots": self.slots}

    def __setstate__(self, state):
        self.slots, self._idle, self._in_flight = state["slots"], [], set()

    def is_free(self, k: int) -> bool:
        return k not in self._in_flight and all(
            _use_count(t) == n for t, n in zip(self.slots[k], self._idle[k]))

    def take(self) -> int:
        """The number of a free slot, marked in flight until `hand_out`, or NO_SLOT."""
        k = next((k for k in range(len(self.slots)) if self.is_free(k)), NO_SLOT)
        if k != NO_SLOT:
            self._in_flight.add(k)
        return k

    def hand_out(self, k: int) -> list[Tensor]:
        """Slot k's result arrived: new tensors on its storage, which now guard it while alive."""
        self._in_flight.discard(k)
        return [t.detach() for t in self.slots[k]]

    def reset(self) -> None:
        """Every task in flight was finished or dropped (a DataLoader iterator restarted)."""
        self._in_flight.clear()
