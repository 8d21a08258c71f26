"""Thin wrappers over torch.distributed: torchrun's environment -> process group, rank / world,
and the one collective the methods need (all-gather of keys for the MoCo queue).

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


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, rank order (no gradient: MoCo keys)."""
    if world_size() == 1:
        return x
    out = torch.empty((world_size() * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous())
    return out


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
