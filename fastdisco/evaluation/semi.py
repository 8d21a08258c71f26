"""Semi-supervised evaluation: a linear classifier trained on a 1% / 10% label subset of the
train set (as in SimCLR / DisCo), evaluated on the full val set.

Two modes:
- `semi_eval` (fast, the default of `fastdisco eval semi`): the cached-feature probe
  (linear.linear_probe_fast) on each subset.
- `semi_protocol` (`fastdisco eval semi --full`): DisCo's `main_lincls_semi.py`. Like its linear
  evaluation, it trains only a new linear layer on the frozen backbone in eval mode (the script
  sets requires_grad=False on everything but fc / classifier): SGD momentum 0.9, wd 0, lr 3.0
  (Reproduction.md's command; the script's default is 30), x0.5 at epochs 60 and 80, 100 epochs,
  batch 256, RandomResizedCrop + flip every epoch, on the subset's images only; validation resize
  + center crop on the whole val set.

Subsets are SimCLR's published lists (`1percent.txt` / `10percent.txt`, one file name per line;
mapped to samples by evaluation.subset_lists) or files of sample indices / keys; or, fast mode
only, drawn per class with a seeded permutation: each class keeps round(fraction * n_c)
samples, at least one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fastdisco.errors import FastdiscoError
from fastdisco.evaluation.linear import linear_probe_fast


def balanced_subset(labels: torch.Tensor, fraction: float, *, seed: int = 0) -> torch.Tensor:
    """Positions (into `labels`) of a class-balanced subset, sorted; labels < 0 are never chosen."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = labels.long().cpu()
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        pos = torch.nonzero(labels == c).flatten()
        n = max(1, round(fraction * pos.numel()))
        chosen.append(pos[torch.randperm(pos.numel(), generator=gen)[:n]])
    if not chosen:
        raise ValueError("no labelled samples to draw a subset from")
    return torch.cat(chosen).sort().values


def read_subset_file(path: str | Path) -> list[int]:
    """Sample indices from a file: one integer index or `%09d` key per line ('#' comments ok)."""
    p = Path(path)
    if not p.is_file():
        raise FastdiscoError(f"subset file not found: {p}")
    out = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        s = Path(s).stem if not s.isdigit() else s  # "000000012.jpg" -> key
        if not s.isdigit():
            raise FastdiscoError(f"{p}:{n}: expected a sample index or key, got {line.strip()!r} "
                                 "(map file names to prepared-sample indices first)")
        out.append(int(s))
    if not out:
        raise FastdiscoError(f"subset file {p} lists no samples")
    return out


def positions_of(indices: torch.Tensor, wanted: Sequence[int]) -> torch.Tensor:
    """Positions in the extracted feature rows whose sample index is in `wanted`."""
    wanted_t = torch.as_tensor(list(wanted), dtype=torch.long, device=indices.device)
    mask = torch.isin(indices, wanted_t)
    found = int(torch.unique(indices[mask]).numel())
    if found != int(torch.unique(wanted_t).numel()):
        raise FastdiscoError(f"subset lists {int(torch.unique(wanted_t).numel())} samples but only {found} "
                             "are in the train data")
    return torch.nonzero(mask).flatten()


def semi_eval(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
              val_labels: torch.Tensor, *, fractions: Sequence[float] = (0.01, 0.1), seed: int = 0,
              subsets: dict[str, torch.Tensor] | None = None, train_indices: torch.Tensor | None = None,
              num_classes: int | None = None, **probe_kwargs) -> dict:
    """{"1%": {...linear_probe_fast result...}, "10%": {...}}: the fast probe on each subset.

    `subsets` (name -> row positions) replaces the seeded fractions when given. `train_indices`
    (the sample index of each row) matters when a sample has several rows (augmented passes):
    fractions are then drawn over samples, and every row of a chosen sample is used.
    """
    if num_classes is None:
        num_classes = int(torch.maximum(train_labels.max(), val_labels.max().to(train_labels.device))) + 1
    if subsets is None:
        subsets = {f"{100 * f:g}%": _draw(train_labels, train_indices, f, seed) for f in fractions}
    out = {}
    for name, pos in subsets.items():
        pos = pos.to(train_feats.device)
        res = linear_probe_fast(train_feats[pos], train_labels[pos], val_feats, val_labels,
                                num_classes=num_classes, seed=seed, **probe_kwargs)
        res["num_labelled"] = int(pos.numel() if train_indices is None else train_indices[pos].unique().numel())
        out[name] = res
    return out


def _draw(labels: torch.Tensor, indices: torch.Tensor | None, fraction: float, seed: int) -> torch.Tensor:
    if indices is None:
        return balanced_subset(labels, fraction, seed=seed)
    uniq, inverse = torch.unique(indices, return_inverse=True)
    first = torch.full((uniq.numel(),), labels.numel(), dtype=torch.long, device=labels.device)
    first.scatter_reduce_(0, inverse, torch.arange(labels.numel(), device=labels.device), reduce="amin")
    chosen = uniq[balanced_subset(labels[first], fraction, seed=seed).to(uniq.device)]
    return torch.nonzero(torch.isin(indices, chosen)).flatten()


DISCO_SEMI_MILESTONES = (60, 80)  # main_lincls_semi.py --schedule default


def semi_protocol(backbone, train_loader, val_loader, subsets: dict[str, Sequence[int]], *, num_classes: int,
                  epochs: int = 100, lr: float = 3.0, milestones: Sequence[int] = DISCO_SEMI_MILESTONES,
                  gamma: float = 0.5, **protocol_kwargs) -> dict:
    """{name: linear_probe_protocol result + num_labelled} for each subset (sample indices) of
    `train_loader`'s dataset; the loader (recipe `linear`) is restricted to each subset in turn."""
    from fastdisco.evaluation.linear import linear_probe_protocol

    out = {}
    for name, indices in subsets.items():
        train_loader.restrict_to(indices)
        res = linear_probe_protocol(backbone, train_loader, val_loader, num_classes=num_classes, epochs=epochs,
                                    lr=lr, milestones=milestones, gamma=gamma, **protocol_kwargs)
        res["num_labelled"] = int(len(train_loader.subset))
        res["settings"]["mode"] = "disco_semi"
        out[name] = res
    return out
