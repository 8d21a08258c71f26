"""The loader contract (docs/design.md section 2) and the logic every backend shares:
the per-epoch permutation, its split over DDP ranks, batch counts, and the resumable position.

Order: epoch e uses `epoch_permutation(N, seed, e)` (identity for the `eval` recipe). The
global sequence is cut (drop_last) or wrapped (not drop_last) to a multiple of
batch_size * world_size, and rank r takes every world_size-th element starting at r, so the
ranks' samples are disjoint (wrapped padding aside, flagged by `Batch.valid`) and every rank
yields the same number of batches. Batch b of rank r draws its augmentation from
`augment.make_generator(seed, e, r, b)`.

Position: `state_dict()` = {"epoch", "batch"} where batch = batches already yielded in that
epoch. `set_epoch(e)` with a new e starts it at batch 0; with the current e it keeps the
position (so load_state_dict() then set_epoch(saved epoch) resumes mid-epoch). A completed
pass moves to {"epoch": e + 1, "batch": 0}.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from fastdisco.loader import view_pool
from fastdisco.augment.params import make_generator
from fastdisco.augment.pipeline import Augment
from fastdisco.loader.view_pool import NO_SLOT, ViewPool
from fastdisco.dataset.webdataset import load_manifest
from fastdisco.errors import FastdiscoError


@dataclass
class Batch:
    views: list[Tensor]                 # V x [B, 3, H, W], device, channels_last, normalised, dtype
    labels: Tensor                      # [B] int64 (-1 = unlabeled), device
    indices: Tensor                     # [B] int64 sample index (manifest order), device
    params: list[dict[str, Tensor]]     # per view; CPU tensors (no device sync to read them)
    valid: Tensor = field(default=None)  # [B] bool, False for wrap-around padding (device)


OUT_POOL_SLOTS = 3  # the batch being made, the one the caller holds, one spare


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, 0x5EED])))
    return rng.permutation(n).astype(np.int64)


def rank_plan(n: int, batch_size: int, world_size: int, rank: int, drop_last: bool,
              seed: int, epoch: int, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """This rank's batches of epoch `epoch`: (indices [nb, B], valid [nb, B])."""
    per_step = batch_size * world_size
    nb = n // per_step if drop_last else -(-n // per_step)
    if nb == 0:
        raise FastdiscoError(f"dataset has {n} samples, fewer than one global batch of {per_step} "
                             f"(data.batch_size x world size): lower data.batch_size or set data.drop_last=false")
    perm = epoch_permutation(n, seed, epoch, shuffle)
    pos = np.arange(nb * per_step)
    order = perm[pos % n]                 # wraps around only when padding
    valid = pos < n
    mine = slice(rank, None, world_size)
    return order[mine].reshape(nb, batch_size), valid[mine].reshape(nb, batch_size)


def subset_plan(subset: np.ndarray, batch_size: int, world_size: int, rank: int, drop_last: bool,
                seed: int, epoch: int, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """rank_plan over the samples `subset` (sorted sample indices) only."""
    idx, valid = rank_plan(len(subset), batch_size, world_size, rank, drop_last, seed, epoch, shuffle)
    return subset[idx], valid


def num_batches(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    per_step = batch_size * world_size
    return n // per_step if drop_last else -(-n // per_step)


class BaseLoader:
    """Position keeping and the shared augmentation; backends implement `_batches`."""

    backend = "base"

    def __init__(self, cfg, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise FastdiscoError(f"rank {rank} is not in [0, world_size={world_size})")
        if cfg.batch_size < 1:
            raise FastdiscoError(f"config key 'data.batch_size': must be >= 1, got {cfg.batch_size}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.rank, self.world_size = rank, world_size
        self.manifest = load_manifest(cfg.path)
        self.num_samples = int(self.manifest["num_samples"])
        self.num_classes = int(self.manifest.get("num_classes", 0))
        self.classes = list(self.manifest.get("classes", []))
        self.shuffle = cfg.recipe != "eval"
        self.augment = Augment(cfg.recipe, cfg.resolution, dtype, channels_last=True,
                                  antialias=cfg.antialias)
        self.num_views = self.augment.num_views
        self.epoch = 0
        self.batch = 0
        self._out_pool: ViewPool | None = None  # reused CPU output batches (_to_batch)
        self.subset: np.ndarray | None = None  # restrict_to(): the epochs draw from these samples only
        self.plan(0)  # a one-line error now if the data cannot fill one global batch

    # ---------------------------------------------------------------- contract
    def __len__(self) -> int:
        n = self.num_samples if self.subset is None else len(self.subset)
        return num_batches(n, self.cfg.batch_size, self.world_size, self.cfg.drop_last)

    def restrict_to(self, indices) -> None:
        """Every epoch's plan draws from these sample indices only (a label subset such as SimCLR's
        1% of ImageNet): order, sharding, augmentation seeds and resume work as over the whole set.
        Restarts the position at batch 0 of the current epoch (and the workers, if running)."""
        sub = np.unique(np.asarray(indices, dtype=np.int64))
        if sub.size == 0 or sub[0] < 0 or sub[-1] >= self.num_samples:
            raise FastdiscoError(f"subset of {self.cfg.path}: sample indices must be in [0, {self.num_samples}) "
                                 f"and at least one, got {sub.size} from {sub[:1].tolist()} to {sub[-1:].tolist()}")
        self.close()
        self.subset, self.batch = sub, 0
        self.plan(self.epoch)  # a one-line error now if the subset cannot fill one global batch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        b = int(state["batch"])
        if not 0 <= b <= len(self):
            raise FastdiscoError(f"loader state batch={b} is outside this epoch's {len(self)} batches "
                                 "(data.batch_size or the world size changed since the checkpoint?)")
        self.epoch, self.batch = int(state["epoch"]), b
        if self.batch == len(self):
            self.epoch, self.batch = self.epoch + 1, 0

    def plan(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.plan_of_epoch()(self.epoch if epoch is None else epoch)

    def plan_of_epoch(self):
        """plan(epoch) as a plain function that does not hold this loader: for the workers and
        pipeline callbacks the loader itself holds (no reference cycle keeps a dropped loader's
        workers alive until the garbage collector runs)."""
        if self.subset is not None:
            return functools.partial(subset_plan, self.subset, self.cfg.batch_size, self.world_size, self.rank,
                                     self.cfg.drop_last, self.cfg.seed, shuffle=self.shuffle)
        return functools.partial(rank_plan, self.num_samples, self.cfg.batch_size, self.world_size, self.rank,
                                 self.cfg.drop_last, self.cfg.seed, shuffle=self.shuffle)

    def close(self) -> None:
        """Stops the backend's workers / pipeline and frees its buffers now (also at the end of a
        `with` block, or when the last reference is dropped); a later pass starts them again.
        Worth calling before anything forks: a forked child must not inherit a live DALI pipeline."""
        self._out_pool = None
        self._release()

    def _release(self) -> None:
        """Backend resources (workers, pipelines) to drop; nothing for the base class."""

    def __enter__(self) -> "BaseLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generator(self, batch: int, epoch: int | None = None) -> torch.Generator:
        return make_generator(self.cfg.seed, self.epoch if epoch is None else epoch, self.rank, batch)

    def __iter__(self) -> Iterator[Batch]:
        idx, valid = self.plan()
        epoch, start = self.epoch, self.batch
        for b, batch in enumerate(self._batches(idx, valid, start, epoch), start):
            self.batch = b + 1  # counted as consumed when handed out
            yield batch
        if self.epoch == epoch and self.batch == len(self):
            self.epoch, self.batch = epoch + 1, 0

    def _batches(self, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int) -> Iterator[Batch]:
        raise NotImplementedError

    # ---------------------------------------------------------------- shared helpers
    def _to_batch(self, cropped: list[Tensor], params: list[dict[str, Tensor]], labels: Tensor,
                  indices: Tensor, valid: Tensor) -> Batch:
        """Cropped uint8 views ([B, 3, res, res], any device) -> the finished Batch."""
        nb = self.device.type == "cuda"
        if self.device.type == "cpu" and view_pool.available():
            # CPU views go into batches the caller has let go of (view_pool: fresh pages cost as
            # much as the fused colour ops); none free -> new ones
            if self._out_pool is None:
                self._out_pool = ViewPool.of_views(OUT_POOL_SLOTS, len(cropped), self.cfg.batch_size,
                                                   self.cfg.resolution, self.dtype, self.augment.channels_last,
                                                   shared=False)
            slot = self._out_pool.take() if cropped[0].shape[0] == self.cfg.batch_size else NO_SLOT
            outs = self._out_pool.slots[slot] if slot != NO_SLOT else [None] * len(cropped)
            views = [self.augment.photometric(c, p, out=o) for c, p, o in zip(cropped, params, outs)]
            if slot != NO_SLOT:
                views = self._out_pool.hand_out(slot)
            return self._device_batch(views, params, labels, indices, valid)
        views = [self.augment.photometric(c.to(self.device, non_blocking=nb), p) for c, p in zip(cropped, params)]
        return self._device_batch(views, params, labels, indices, valid)

    def _device_batch(self, views: list[Tensor], params: list[dict[str, Tensor]], labels: Tensor,
                        indices: Tensor, valid: Tensor) -> Batch:
        """Views already augmented and normalised (in `dtype`) -> the Batch on the device."""
        nb = self.device.type == "cuda"
        return Batch([v.to(self.device, non_blocking=nb) for v in views], labels.to(self.device, non_blocking=nb),
                     indices.to(self.device, non_blocking=nb), params, valid.to(self.device, non_blocking=nb))
