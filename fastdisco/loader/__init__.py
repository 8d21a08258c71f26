"""Loaders: a prepared dataset -> multi-view `Batch`es on the device (docs/design.md section 2).

`make_loader(cfg.data, ...)` picks the backend from `cfg.data.backend` in `BACKENDS` (on CUDA
wrapped in `prefetch.Prefetched`: the next batches made on a side stream): one module per backend, each a `BaseLoader` subclass (`base`: the Batch contract, the epoch plan over DDP
ranks, the resumable position, the shared augmentation). Backends are imported only when chosen:
DALI and ffcv are optional dependencies.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path

import torch

from fastdisco.errors import FastdiscoError
from fastdisco.loader.base import BaseLoader, Batch, epoch_permutation, num_batches, rank_plan

# backend name -> "module:class"
BACKENDS = {
    "torch": "fastdisco.loader.torch_backend:TorchLoader",
    "dali": "fastdisco.loader.dali_backend:DaliLoader",
    "ffcv": "fastdisco.loader.ffcv_backend:FfcvLoader",
}


def _have_dali() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace at all
        return False


def resolve_backend(name: str, device: torch.device | str, path: str | Path) -> str:
    """`data.backend: auto` -> "dali" (nvJPEG decode on the GPU, the fastest path) on a CUDA device
    when DALI is installed and the prepared dataset has webdataset shards; "torch" otherwise (on
    CUDA the torch backend still decodes on the GPU through torchvision). Other names pass through."""
    if name != "auto":
        return name
    if torch.device(device).type == "cuda" and _have_dali():
        manifest = Path(path) / "manifest.json"
        try:
            has_shards = bool(json.loads(manifest.read_text()).get("shards"))
        except (OSError, ValueError):
            has_shards = False  # make_loader's own checks report a missing or damaged manifest
        if has_shards:
            return "dali"
    return "torch"


def make_loader(cfg, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                rank: int = 0, world_size: int = 1) -> BaseLoader:
    """The loader for `cfg.backend` (cfg is the DataConfig section)."""
    if not cfg.path:
        raise FastdiscoError("config key 'data.path' is empty: point it at a prepared dataset")
    cfg = dataclasses.replace(cfg, backend=resolve_backend(cfg.backend, device, cfg.path))
    if cfg.backend not in BACKENDS:
        raise FastdiscoError(f"config key 'data.backend': unknown backend {cfg.backend!r} "
                             f"(known: {', '.join(BACKENDS)})")
    module, cls = BACKENDS[cfg.backend].split(":")
    loader = getattr(importlib.import_module(module), cls)(cfg, device=device, dtype=dtype, rank=rank,
                                                           world_size=world_size)
    if loader.device.type == "cuda" and cfg.prefetch > 0:  # next batches made on a side stream
        from fastdisco.loader.prefetch import Prefetched

        return Prefetched(loader, cfg.prefetch)
    return loader


__all__ = ["BACKENDS", "BaseLoader", "Batch", "epoch_permutation", "make_loader", "num_batches", "rank_plan"]
