"""Optimizers and the learning-rate schedule.

- Parameter groups: no weight decay on norms and biases (any parameter with ndim <= 1).
- SGD / AdamW with `fused=True` where the device supports it (CUDA, CPU), `foreach` otherwise.
  Fused optimizers read a device-side `found_inf` flag and skip the update on device, which is
  how a non-finite step is skipped without a host sync (see engine/trainer.py).
- LARS (You et al. 2017): SGD + momentum with a per-layer trust ratio; norms and biases get
  neither weight decay nor adaptation (as in SimCLR / BYOL). Honours `found_inf` too.
- Cosine schedule with linear warm-up, precomputed per optimizer step as a tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from fastdisco.errors import FastdiscoError


def param_groups(model: nn.Module, weight_decay: float, decay_norm_bias: bool = False) -> list[dict]:
    """Two groups: weights with decay; norms and biases (ndim <= 1) without (unless
    `decay_norm_bias`, as the official MoCo/DisCo code does) and without LARS adaptation."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lars": True},
            {"params": no_decay, "weight_decay": weight_decay if decay_norm_bias else 0.0, "lars": False}]


def scaled_lr(optim_cfg, global_batch: int) -> float:
    """Linear scaling rule: lr is given at `base_batch` source images per optimizer step."""
    return optim_cfg.lr * global_batch / optim_cfg.base_batch


def _fused_ok(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu", "xpu", "mps")


def build_optimizer(optim_cfg, model: nn.Module, device: torch.device, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, optim_cfg.weight_decay, optim_cfg.decay_norm_bias)
    fused = optim_cfg.fused and _fused_ok(device)
    kw = {"fused": True} if fused else {"foreach": True}
    if optim_cfg.name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, **kw)
        if fused and optim_cfg.momentum > 0:
            # Fused SGD allocates its momentum buffer with empty_like on the first step; a skipped
            # first step (found_inf) would leave garbage there. Zeros are exact: buf = 0*m + g = g.
            for g in opt.param_groups:
                for p in g["params"]:
                    opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return opt
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=optim_cfg.betas, **kw)
    if optim_cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=optim_cfg.momentum, eta=optim_cfg.lars_eta)
    raise FastdiscoError(f"config key 'optim.name': unknown optimizer {optim_cfg.name!r}")


def supports_found_inf(opt: torch.optim.Optimizer) -> bool:
    """Whether the optimizer skips its update on device when `opt.found_inf` is non-zero."""
    return isinstance(opt, LARS) or bool(opt.defaults.get("fused"))


class LARS(torch.optim.Optimizer):
    """LARS: g' = g + wd * w; g' *= eta * |w| / |g'| (trust ratio, for groups with lars=True);
    buf = m * buf + g'; w -= lr * buf. Skips the update on device when `self.found_inf` != 0.

    Vectorised: each group is a handful of `torch._foreach_*` kernels over all its tensors (the
    per-tensor norms in one `_foreach_norm`, the trust ratios as one stacked tensor), not a Python
    loop of ~10 kernels per parameter. Momentum buffers start at zero (exact: 0 * m + g' = g'),
    so the update has the same form on every step, also after a skipped first step."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))
        self.found_inf: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None):
        keep = None if self.found_inf is None else (self.found_inf == 0)
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            w = [p.float() for p in params]  # no copy for fp32 parameters
            d = [p.grad.float() for p in params]
            if g["weight_decay"]:
                d = torch._foreach_add(d, w, alpha=g["weight_decay"])
            if g["lars"]:
                wn = torch.stack(torch._foreach_norm(w))
                dn = torch.stack(torch._foreach_norm(d))
                trust = torch.where((wn > 0) & (dn > 0), g["eta"] * wn / dn, torch.ones_like(wn))
                d = torch._foreach_mul(d, trust.unbind())
            if keep is not None:  # a skipped step: no update, momentum kept (0 * NaN would be NaN)
                d = [torch.where(keep, x, 0.0) for x in d]
            bufs = []
            for p in params:
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
                bufs.append(st["momentum_buffer"])
            if keep is None:
                torch._foreach_mul_(bufs, g["momentum"])
            else:  # m on a kept step, 1 on a skipped one (then d is 0): the buffer is unchanged
                torch._foreach_mul_(bufs, torch.where(keep, g["momentum"], 1.0))
            torch._foreach_add_(bufs, d)
            upd = bufs if keep is None else torch._foreach_mul(bufs, keep.float())
            if any(p.dtype != torch.float32 for p in params):
                upd = [u.to(p.dtype) for u, p in zip(upd, params)]
            torch._foreach_add_(params, upd, alpha=-g["lr"])


def cosine_schedule(base_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> torch.Tensor:
    """lr for every optimizer step 0..total_steps-1: linear warm-up from base_lr/warmup to
    base_lr, then half-cosine down to min_lr_ratio * base_lr. float64 CPU tensor."""
    steps = torch.arange(total_steps, dtype=torch.float64)
    lo = base_lr * min_lr_ratio
    span = max(total_steps - warmup_steps, 1)
    progress = ((steps - warmup_steps) / span).clamp(0, 1)
    lr = lo + (base_lr - lo) * 0.5 * (1 + torch.cos(math.pi * progress))
    if warmup_steps > 0:
        lr = torch.where(steps < warmup_steps, base_lr * (steps + 1) / warmup_steps, lr)
    return lr
