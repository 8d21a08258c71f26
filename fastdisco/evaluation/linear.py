"""Linear probes of a frozen backbone.

`linear_probe_protocol`: the DisCo protocol (docs/recipes.md): backbone frozen in eval mode, a new
linear layer initialised N(0, 0.01) with bias 0, SGD momentum 0.9, lr 3.0, wd 0, batch 256 (the
loader's), 100 epochs, lr x0.5 at epochs 5, 10, ..., 45, 60, 80; images augmented by the loader
(recipe `linear`: RRC + flip), validation with recipe `eval`. Slow: every epoch runs the backbone.

`linear_probe_fast`: the quick check. Features are extracted once (train with the eval transform,
optionally a few augmented passes concatenated) and a linear layer is trained on the cached
features on the device: mini-batch AdamW (default) or SGD with a per-step cosine schedule, or
full-batch L-BFGS. Features are standardised with the train mean/std by default, which makes the
default step sizes independent of the backbone's feature scale. Numbers are close to, but not the
same as, the protocol's (no augmentation, different optimiser): report which one you quote.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastdisco.evaluation.features import (_autocast, _bar, extract_features, feature_fn, prepare_input,
                                           unpack_batch)

DISCO_MILESTONES = (5, 10, 15, 20, 25, 30, 35, 40, 45, 60, 80)
FAST_DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.1, "lbfgs": 1.0}


# --------------------------------------------------------------------------- metrics
@torch.no_grad()
def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of rows whose label is among the top-k logits, for each k (a device tensor).
    k is capped at the number of classes (top-5 of a 3-class problem is 100%)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices                      # [N, kmax]
    hit = top.eq(labels[:, None])                               # [N, kmax]
    return torch.stack([hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks])


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": %, "top5": %} of logits [N, C] against labels [N]."""
    correct = topk_correct(logits, labels, ks).double() * (100.0 / max(1, labels.numel()))
    return {f"top{k}": float(v) for k, v in zip(ks, correct.tolist())}


@torch.no_grad()
def accuracy_of(linear: nn.Module, feats: torch.Tensor, labels: torch.Tensor, chunk: int = 65536) -> dict[str, float]:
    """Top-1/top-5 of `linear` on cached features, in chunks (bounded memory)."""
    correct = torch.zeros(2, dtype=torch.long, device=feats.device)
    for i in range(0, feats.shape[0], chunk):
        correct += topk_correct(linear(feats[i:i + chunk]), labels[i:i + chunk])
    pct = (correct.double() * (100.0 / max(1, labels.numel()))).tolist()
    return {"top1": pct[0], "top5": pct[1]}


def new_linear(dim: int, num_classes: int, device=None) -> nn.Linear:
    """The probe's layer as in MoCo / DisCo main_lincls: weight N(0, 0.01), bias 0."""
    layer = nn.Linear(dim, num_classes, device=device)
    nn.init.normal_(layer.weight, mean=0.0, std=0.01)
    nn.init.zeros_(layer.bias)
    return layer


def _check_labels(labels: torch.Tensor, what: str) -> None:
    if labels.numel() == 0:
        raise ValueError(f"{what}: no samples")


# --------------------------------------------------------------------------- fast probe
def linear_probe_fast(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                      val_labels: torch.Tensor, *, num_classes: int | None = None, epochs: int = 100,
                      batch_size: int = 1024, lr: float | None = None, weight_decay: float = 0.0,
                      optimizer: str = "adamw", standardize: bool = True, seed: int = 0,
                      progress: bool = False) -> dict:
    """Train a linear classifier on cached features; return {"top1", "top5", "train_top1", "settings"}.

    Runs on the features' device. `epochs` counts passes over the train features (for L-BFGS:
    full-batch iterations). Labels must be >= 0 (labelled samples only).
    """
    _check_labels(train_labels, "train")
    _check_labels(val_labels, "val")
    if optimizer not in FAST_DEFAULT_LR:
        raise ValueError(f"unknown optimizer {optimizer!r} (known: {', '.join(FAST_DEFAULT_LR)})")
    lr = FAST_DEFAULT_LR[optimizer] if lr is None else lr
    device = train_feats.device
    if num_classes is None:
        num_classes = int(torch.maximum(train_labels.max(), val_labels.max())) + 1
    x_tr, x_va = train_feats.float(), val_feats.float().to(device)
    y_tr, y_va = train_labels.long(), val_labels.long().to(device)
    if standardize:
        mean = x_tr.mean(0, keepdim=True)
        std = x_tr.std(0, keepdim=True).clamp_min(1e-6)  # constant dims stay 0, not inf
        x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    torch.manual_seed(seed)
    layer = new_linear(x_tr.shape[1], num_classes, device=device)
    if optimizer == "lbfgs":
        _fit_lbfgs(layer, x_tr, y_tr, iters=epochs, lr=lr, weight_decay=weight_decay)
    else:
        _fit_minibatch(layer, x_tr, y_tr, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, optimizer=optimizer, seed=seed, progress=progress)
    result = accuracy_of(layer, x_va, y_va)
    result["train_top1"] = accuracy_of(layer, x_tr, y_tr)["top1"]
    result["settings"] = {"mode": "fast", "optimizer": optimizer, "epochs": epochs, "batch_size": batch_size,
                          "lr": lr, "weight_decay": weight_decay, "standardize": standardize, "seed": seed,
                          "num_classes": num_classes, "num_train": int(y_tr.numel()), "num_val": int(y_va.numel()),
                          "feature_dim": int(x_tr.shape[1])}
    return result


def _fit_minibatch(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int,
                   lr: float, weight_decay: float, optimizer: str, seed: int, progress: bool) -> None:
    n = x.shape[0]
    bs = max(1, min(batch_size, n))
    steps_per_epoch = math.ceil(n / bs)
    total = max(1, epochs * steps_per_epoch)
    if optimizer == "adamw":
        opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    step = 0
    for _ in _bar(range(epochs), progress, "linear (fast)"):
        perm = torch.randperm(n, generator=gen, device=x.device)
        for i in range(0, n, bs):
            # Cosine decay per step; a Python float, so no device sync.
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
            idx = perm[i:i + bs]
            loss = F.cross_entropy(layer(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1


def _fit_lbfgs(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor, *, iters: int, lr: float,
               weight_decay: float, chunk: int = 65536) -> None:
    """Full-batch L-BFGS on mean cross-entropy + wd/2 ||W||^2; gradients accumulated over
    chunks so the N x C logits never exist at once."""
    opt = torch.optim.LBFGS(layer.parameters(), lr=lr, max_iter=max(1, iters), history_size=20,
                            line_search_fn="strong_wolfe")
    n = x.shape[0]

    def closure():
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=x.device)
        for i in range(0, n, chunk):
            part = F.cross_entropy(layer(x[i:i + chunk]), y[i:i + chunk], reduction="sum") / n
            part.backward()
            total += part.detach()
        if weight_decay:
            reg = 0.5 * weight_decay * layer.weight.square().sum()
            reg.backward()
            total += reg.detach()
        return total

    opt.step(closure)


# --------------------------------------------------------------------------- DisCo protocol
def linear_probe_protocol(backbone: nn.Module, train_loader: Iterable, val_loader: Iterable, *,
                          num_classes: int, epochs: int = 100, lr: float = 3.0, momentum: float = 0.9,
                          weight_decay: float = 0.0, milestones: Sequence[int] = DISCO_MILESTONES,
                          gamma: float = 0.5, device: torch.device | str | None = None,
                          amp_dtype: torch.dtype | None = None, seed: int = 0, progress: bool = False,
                          log=None) -> dict:
    """The DisCo linear evaluation protocol; returns {"top1", "top5", "history", "settings"}.

    The batch size is the loader's (256 in the protocol). `log(epoch, metrics)` is called once per
    epoch with the mean train loss (the only host sync of an epoch).
    """
    if device is None:
        device = next(backbone.parameters()).device
    device = torch.device(device)
    backbone.eval()  # frozen, BN uses running statistics
    for p in backbone.parameters():
        p.requires_grad_(False)
    fn = feature_fn(backbone)
    torch.manual_seed(seed)
    layer: nn.Linear | None = None
    opt = sched = None
    history = []
    for epoch in _bar(range(epochs), progress, "linear (protocol)"):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        batches = 0
        for batch in train_loader:
            x, y, _, valid = unpack_batch(batch)
            x, dtype = prepare_input(x, device, amp_dtype)
            y = y.to(device, non_blocking=True).long()
            with torch.no_grad(), _autocast(device, dtype):
                f = fn(x).float()
            # Padding rows (valid False) and unlabelled rows get zero weight; no host sync.
            w = (y >= 0).float() if valid is None else ((y >= 0) & valid.to(device)).float()
            if layer is None:  # the feature width is known only now
                layer = new_linear(f.shape[1], num_classes, device=device)
                opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
                sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
            per_sample = F.cross_entropy(layer(f), y.clamp_min(0), reduction="none")
            loss = (per_sample * w).sum() / w.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            batches += 1
        if layer is None:
            raise ValueError("the train loader yielded no batches")
        lr_now = opt.param_groups[0]["lr"]
        sched.step()
        row = {"epoch": epoch + 1, "loss": float(loss_sum) / max(1, batches), "lr": lr_now}
        history.append(row)
        if log is not None:
            log(epoch + 1, row)
    val_feats, val_labels = extract_features(backbone, val_loader, device=device, amp_dtype=amp_dtype,
                                             progress=progress, desc="val features")
    result = accuracy_of(layer, val_feats, val_labels)
    result["history"] = history
    result["settings"] = {"mode": "protocol", "epochs": epochs, "lr": lr, "momentum": momentum,
                          "weight_decay": weight_decay, "milestones": list(milestones), "gamma": gamma,
                          "seed": seed, "num_classes": num_classes, "feature_dim": layer.in_features,
                          "num_val": int(val_labels.numel())}
    return result
