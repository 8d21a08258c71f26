"""Grouped BatchNorm: training-mode statistics per group of samples, as if each group sat on its
own GPU, computed without copying the activation in either memory format.

Layout of a batch of N samples (dim 0):
- `views` views stacked along the batch ([view 0; view 1; ...], N / views samples each) when the
  caller runs several views as one forward inside `batched_views(views)`; 1 otherwise. Groups
  never mix two views.
- within a view of B samples, G = B / group_size groups, sample j of the view in group j mod G
  (the official MoCo CIFAR demo's SplitBatchNorm). When B is not a multiple of group_size, holds
  fewer than two groups, or group_size is 0, the whole view is one group.
With one view and one group this is plain BatchNorm (PyTorch's own kernel).

No copy of the activation, in either memory format: one view of a contiguous input is
[B/G, G*C, *spatial] as a view (channel block g = group g), normalised by PyTorch's own fused
kernel; every other case (channels_last, several views) reduces over a view of the input,
[views, B/G, G, C, *spatial], with torch ops (var_mean, addcmul; BN's backward formula per
group), so the output and the input gradient come out in the input's memory format.

Running statistics (when tracked): each view updates them once, in view order, with the mean
over its groups of the groups' batch mean / unbiased variance - exactly what one forward per view
would leave (`running <- (1 - momentum) * running + momentum * mean over groups`), and
`num_batches_tracked` counts one per view.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdisco.distributed import world_size

_VIEWS = 1  # views stacked along the batch of the forward being run (set by batched_views)


@contextlib.contextmanager
def batched_views(views: int):
    """Inside this block, every training-mode grouped BN treats its batch as `views` equal views
    stacked along dim 0 and keeps their statistics apart: one batched forward of [x0; x1] gives
    what two forwards of x0 and x1 give (outputs, gradients, running statistics)."""
    global _VIEWS
    previous, _VIEWS = _VIEWS, views
    try:
        yield
    finally:
        _VIEWS = previous


def group_layout(n: int, group_size: int, views: int = 1) -> tuple[int, int]:
    """(views, groups per view) for a batch of n samples (see the module docstring)."""
    if n % views:
        raise ValueError(f"grouped BN: a batch of {n} samples does not split into {views} equal views")
    per_view = n // views
    groups = per_view // group_size if group_size > 0 and per_view % group_size == 0 else 1
    return views, groups if groups >= 2 else 1


def _mean(t: torch.Tensor, dims: tuple[int, ...], acc: torch.dtype) -> torch.Tensor:
    """Mean over `dims` (kept) in the accumulation dtype `acc`. A CPU sum / mean of a bf16 or
    fp16 tensor first copies it to fp32 (measured: an `aten::_to_copy` the size of the input);
    var_mean reads it as it is and accumulates in fp32, so on CPU low precision goes through it."""
    if t.dtype != acc and t.device.type == "cpu":
        return torch.var_mean(t, dim=dims, correction=0, keepdim=True)[1].to(acc)
    return t.mean(dim=dims, keepdim=True, dtype=acc)


class _GroupedBatchNormFn(torch.autograd.Function):
    """Batch norm with statistics per (view, group, channel) of x6 = [V, A, G, C, *spatial]
    (reduced over A and the spatial dims). Returns (y, mean, var): mean / var (biased) in the
    accumulation dtype (fp32, fp64 for fp64 input), shaped for broadcasting; only y has a
    gradient. The backward is BatchNorm's own formula, per group. Every activation-sized tensor
    made here is y, dx or one temporary, all in x's layout.

    Low precision (bf16 / fp16 x): the mean m0 that var_mean returns is rounded to x's dtype;
    x - m0 is then exact to x's precision and its own (small) mean `delta` corrects m0, so a
    large mean never costs precision (the centred value is scaled, not x)."""

    @staticmethod
    def forward(ctx, x6, weight, bias, eps: float, dims: tuple[int, ...]):
        acc = torch.promote_types(x6.dtype, torch.float32)
        low = x6.dtype != acc
        shape = [1] * x6.dim()
        shape[3] = x6.shape[3]
        var, m0 = torch.var_mean(x6, dim=dims, correction=0, keepdim=True)
        var = var.to(acc)
        rstd = torch.rsqrt(var + eps)
        scale = rstd if weight is None else rstd * weight.to(acc).view(shape)
        b = torch.zeros((), dtype=acc, device=x6.device) if bias is None else bias.to(acc).view(shape)
        if low:
            y = x6 - m0
            delta = _mean(y, dims, acc)
            y.mul_(scale.to(y.dtype)).add_((b - delta * scale).to(y.dtype))
        else:
            delta = torch.zeros_like(rstd)
            y = torch.addcmul(b - m0 * scale, x6, scale)  # one pass; keeps x6's layout
        ctx.save_for_backward(x6, m0, delta, rstd, weight)
        ctx.dims, ctx.acc = dims, acc
        ctx.bias_dtype = None if bias is None else bias.dtype
        mean = m0.to(acc) + delta
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x6, m0, delta, rstd, weight = ctx.saved_tensors
        dims, acc = ctx.dims, ctx.acc
        count = x6.numel() // rstd.numel()
        shape = [1] * x6.dim()
        shape[3] = x6.shape[3]
        # x - mean = base - shift: low precision centres on m0 first (exact to x's precision);
        # fp32 / fp64 use x itself (one pass fewer, cancellation far below the tolerances)
        low = x6.dtype != acc
        base, shift = (x6 - m0, delta) if low else (x6, m0)
        sum_dy = _mean(dy, dims, acc) * count
        sum_dy_xc = _mean(base * dy, dims, acc) * count - shift * sum_dy  # sum(dy * (x - mean))
        per_channel = [0, 2]  # the groups share the affine parameters: sum over views and groups
        dweight = (sum_dy_xc * rstd).sum(per_channel).view(-1).to(weight.dtype) \
            if weight is not None and ctx.needs_input_grad[1] else None
        dbias = sum_dy.sum(per_channel).view(-1).to(ctx.bias_dtype) \
            if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            k = rstd if weight is None else rstd * weight.to(acc).view(shape)
            # dx = k * (dy - sum_dy / count - (x - mean) * rstd^2 * sum_dy_xc / count)
            coef = -k * rstd * rstd * sum_dy_xc / count
            offset = -k * sum_dy / count - shift * coef
            dt = x6.dtype
            dx = torch.addcmul(offset.to(dt), base, coef.to(dt)).addcmul_(dy, k.to(dt))
        return dx, dweight, dbias, None, None


def grouped_batch_norm(x: torch.Tensor, views: int, groups: int, weight, bias, running_mean, running_var,
                       num_batches_tracked, momentum: float, eps: float) -> torch.Tensor:
    """Training-mode batch norm of x [N, C, *spatial] with statistics per (view, group) of the
    layout described in the module docstring; updates the running statistics in place when given."""
    n, c = x.shape[0], x.shape[1]
    x6 = x.view(views, n // (views * groups), groups, c, *x.shape[2:])
    dims = (1,) + tuple(range(4, x6.dim()))
    count = x6.shape[1] * x6[0, 0, 0, 0].numel()
    if count < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
                         f"in {views * groups} BN groups")
    y6, mean, var = _GroupedBatchNormFn.apply(x6, weight, bias, eps, dims)
    if running_mean is not None:
        with torch.no_grad():
            per_view_mean = mean.view(views, groups, c).mean(1)
            per_view_var = var.view(views, groups, c).mean(1) * (count / (count - 1))
            for v in range(views):  # one update per view, in order: as one forward per view
                running_mean.lerp_(per_view_mean[v].to(running_mean.dtype), momentum)
                running_var.lerp_(per_view_var[v].to(running_var.dtype), momentum)
            if num_batches_tracked is not None:
                num_batches_tracked.add_(views)
    return y6.reshape(x.shape)  # a view: y6 has x6's layout


class _GroupedBatchNorm:
    """The forward shared by GroupedBatchNorm2d / 1d (mixed in before the nn.BatchNormNd)."""

    group_size: int
    post: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.post(super().forward(x))
        views, groups = group_layout(x.shape[0], self.group_size, _VIEWS)
        if views * groups == 1:
            n = x.shape[0]
            if self.group_size > 0 and not (n == self.group_size and world_size() > 1):  # one group per rank: MoCo's layout
                warnings.warn(f"{type(self).__name__}: a batch of {n} is not 2+ groups of {self.group_size}: "
                              f"plain BatchNorm over the whole batch (no shuffle-BN)")
            return self.post(super().forward(x))
        self._check_input_dim(x)
        track = self.track_running_stats and self.running_mean is not None
        # grouped statistics always use an exponential average (momentum None: 0.1, as before)
        momentum = self.momentum if self.momentum is not None else 0.1
        if views == 1 and x.is_contiguous():
            return self.post(self._native_groups(x, groups, track, momentum))
        y = grouped_batch_norm(x, views, groups, self.weight, self.bias,
                               self.running_mean if track else None, self.running_var if track else None,
                               self.num_batches_tracked if track else None, momentum, self.eps)
        return self.post(y)

    def _native_groups(self, x: torch.Tensor, groups: int, track: bool, momentum: float) -> torch.Tensor:
        """One view, contiguous input: [N, C, *] -> [N/G, G*C, *] is a view (channel block g =
        samples j mod G), so PyTorch's own fused kernel runs on it with parameters repeated per
        group; the same statistics and updates as grouped_batch_norm (tests/test_grouped_bn.py)."""
        n, c = x.shape[0], x.shape[1]
        mean = self.running_mean.repeat(groups) if track else None
        var = self.running_var.repeat(groups) if track else None
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        y = F.batch_norm(x.view(n // groups, groups * c, *x.shape[2:]), mean, var, weight, bias, True, momentum,
                         self.eps)
        if track:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(groups, c).mean(0))
                self.running_var.copy_(var.view(groups, c).mean(0))
                self.num_batches_tracked.add_(1)
        return y.view(x.shape)


class GroupedBatchNorm2d(_GroupedBatchNorm, nn.BatchNorm2d):
    """BatchNorm2d with training-mode statistics per group of `group_size` samples (module
    docstring). Same parameters and buffers (same state_dict keys) as the BatchNorm2d it
    replaces. `post` holds the activation / drop of timm's BatchNormAct2d (no parameters, no keys)."""

    def __init__(self, num_features: int, group_size: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, post: nn.Module | None = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group_size = group_size
        self.post = post if post is not None else nn.Identity()


class GroupedBatchNorm1d(_GroupedBatchNorm, nn.BatchNorm1d):
    """BatchNorm1d ([N, C] or [N, C, L]) grouped like GroupedBatchNorm2d (a projection head's BN)."""

    def __init__(self, num_features: int, group_size: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, post: nn.Module | None = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group_size = group_size
        self.post = post if post is not None else nn.Identity()


def convert_grouped_bn(module: nn.Module, group_size: int, include_1d: bool = False) -> nn.Module:
    """Replace every BatchNorm2d (incl. timm's BatchNormAct2d) - and with `include_1d` every
    BatchNorm1d - in place by its grouped version, keeping parameters, buffers, training mode and
    state_dict keys."""
    for name, child in list(module.named_children()):
        if isinstance(child, (GroupedBatchNorm2d, GroupedBatchNorm1d)):
            continue
        cls = GroupedBatchNorm2d if isinstance(child, nn.BatchNorm2d) else \
            GroupedBatchNorm1d if include_1d and isinstance(child, nn.BatchNorm1d) else None
        if cls is None:
            convert_grouped_bn(child, group_size, include_1d)
            continue
        post = None
        if hasattr(child, "act") and hasattr(child, "drop"):  # timm BatchNormAct2d
            post = nn.Sequential(child.drop, child.act)
        new = cls(child.num_features, group_size, child.eps, child.momentum, child.affine,
                  child.track_running_stats, post)
        new.load_state_dict(child.state_dict())
        new.train(child.training)
        p = next(child.parameters(), None)
        if p is not None:
            new.to(device=p.device, dtype=p.dtype)
        setattr(module, name, new)
    return module


def mixes_views(module: nn.Module) -> bool:
    """True when a batched forward of stacked views through `module` would not equal one forward
    per view: it holds a training-mode BatchNorm other than the grouped ones (plain BN, SyncBN),
    whose statistics would span all views."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               and not isinstance(m, (GroupedBatchNorm2d, GroupedBatchNorm1d))
               for m in module.modules())
