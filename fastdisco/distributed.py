"""Thin wrappers over torch.distributed: torchrun's environment -> process group, rank / world,
and the collectives the methods need: the all-gather of keys for the MoCo queue, and MoCo's
cross-rank batch shuffle for shuffle-BN (`shared_randperm`, `batch_shuffle`, `batch_unshuffle`).

Nothing home-made: `torchrun --nproc_per_node=N -m fastdisco train ...` sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT; a plain `fastdisco train` is a world of one with no process group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """'auto' -> the local CUDA device when there is one, else CPU."""
    from fastdisco.errors import FastdiscoError

    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FastdiscoError("config key 'train.device': 'cuda' was asked for but no CUDA device is available")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device_pref: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU), or stay single."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, rank order (no gradient: MoCo keys)."""
    if world_size() == 1:
        return x
    out = torch.empty((world_size() * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous())
    return out


# --------------------------------------------------------------------------- shuffle-BN
# MoCo's `_batch_shuffle_ddp` / `_batch_unshuffle_ddp` (facebookresearch/moco, builder.py): the
# key batch is all-gathered, permuted with one permutation every rank shares, and each rank
# encodes its slice, so a key's BatchNorm statistics come from images drawn from every rank's
# batch, not from its query's own. In a world of one these reduce to `x[perm]` / `y[argsort(perm)]`.
@torch.no_grad()
def shared_randperm(n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation of range(n), the same on every rank: drawn on rank 0 (from
    `generator`, on `device`, else the global RNG) and broadcast. Only rank 0's generator is
    advanced, so restoring every rank's generator state restores the sequence of permutations."""
    if world_size() == 1:
        return torch.randperm(n, device=device, generator=generator)
    perm = torch.randperm(n, device=device, generator=generator) if rank() == 0 \
        else torch.empty(n, dtype=torch.long, device=device)
    dist.broadcast(perm, src=0)
    return perm


def _gather_batch(x: torch.Tensor) -> torch.Tensor:
    """all_gather_cat keeping a channels_last image batch channels_last (gathered as NHWC, no copy)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return all_gather_cat(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return all_gather_cat(x)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """This rank's slice of the global batch (every rank's `x`, rank order) taken in the order of
    `perm`, a permutation of the global batch shared by all ranks. Every rank must pass a batch
    of the same size (the loaders guarantee it)."""
    return _gather_batch(x)[perm.view(world_size(), -1)[rank()]]


@torch.no_grad()
def batch_unshuffle(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of `batch_shuffle` for the encoder's outputs: gathers every rank's rows and keeps
    this rank's original samples, in their original order."""
    return _gather_batch(y)[torch.argsort(perm).view(world_size(), -1)[rank()]]


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (for logging only, at the logging cadence)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
