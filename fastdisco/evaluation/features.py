"""Extract features once, batched, on the device.

The loop never waits on the host: every batch's features, labels and indices stay on the device
and are concatenated once at the end (no `.item()`, no per-batch copies to the CPU).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


def feature_fn(backbone: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pooled pre-logit features of a timm backbone: `backbone(x)` for a headless
    (`num_classes=0`) model, else `forward_head(forward_features(x), pre_logits=True)`."""
    if getattr(backbone, "num_classes", 0) == 0 or not hasattr(backbone, "forward_head"):
        return backbone
    return lambda x: backbone.forward_head(backbone.forward_features(x), pre_logits=True)


def unpack_batch(batch, view: int = 0):
    """(images, labels, indices | None, valid | None) from a loader Batch (docs/design.md
    section 2; `valid` is False on the wrap-around padding of the last batch) or from an
    (images, labels[, indices]) tuple, as plain DataLoaders give."""
    if hasattr(batch, "views"):
        return batch.views[view], batch.labels, getattr(batch, "indices", None), getattr(batch, "valid", None)
    x, y, *rest = batch
    return x, y, (rest[0] if rest else None), None


def prepare_input(x: torch.Tensor, device: torch.device, amp_dtype: torch.dtype | None):
    """Move images to the device; pick the autocast dtype (the images' own half dtype when
    none is given; fp32 means no autocast, and half images are then upcast)."""
    x = x.to(device, non_blocking=True)
    dtype = amp_dtype if amp_dtype is not None else x.dtype
    if dtype == torch.float32:
        x = x.float()
    return x, dtype


def _autocast(device: torch.device, dtype: torch.dtype | None):
    enabled = dtype is not None and dtype != torch.float32
    return torch.autocast(device.type, dtype=dtype if enabled else torch.bfloat16, enabled=enabled)


@torch.inference_mode()
def extract_features(backbone: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
                     view: int = 0, amp_dtype: torch.dtype | None = None, fn: Callable | None = None,
                     progress: bool = False, desc: str = "features", return_indices: bool = False):
    """Run `backbone` (in eval mode) over `loader` once.

    Returns (feats [N, d] float32, labels [N] int64) on `device` -- plus indices [N] int64 (the
    manifest sample index; running position when the loader gives none) if `return_indices`.
    Rows a loader marks as padding (`Batch.valid` False) are left out.
    amp_dtype: autocast dtype (bf16 on GPU); None = the dtype the images come in.
    fn: feature function (default `feature_fn(backbone)`; e.g. the model itself for logits).
    """
    if device is None:
        device = next(backbone.parameters()).device
    device = torch.device(device)
    backbone.eval()
    fn = fn or feature_fn(backbone)
    feats, labels, indices, valids = [], [], [], []
    seen = 0
    bar = _bar(loader, progress, desc)
    for batch in bar:
        x, y, idx, valid = unpack_batch(batch, view)
        x, dtype = prepare_input(x, device, amp_dtype)
        with _autocast(device, dtype):
            f = fn(x)
        n = f.shape[0]
        feats.append(f.float())
        labels.append(y.to(device, non_blocking=True).long())
        if idx is None:
            idx = torch.arange(seen, seen + n, device=device)
        indices.append(idx.to(device, non_blocking=True).long())
        if valid is None:
            valid = torch.ones(n, dtype=torch.bool, device=device)
        valids.append(valid.to(device, non_blocking=True).bool())
        seen += n
    if not feats:
        raise ValueError("the loader yielded no batches")
    # Padding rows are dropped once, here: a boolean mask per batch would sync every batch.
    keep = torch.cat(valids)
    out = (torch.cat(feats)[keep], torch.cat(labels)[keep])
    return (*out, torch.cat(indices)[keep]) if return_indices else out


def _bar(it, progress: bool, desc: str):
    if not progress:
        return it
    from tqdm.auto import tqdm

    total = len(it) if hasattr(it, "__len__") else None
    return tqdm(it, total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False)
