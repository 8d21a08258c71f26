"""The batched path (an accelerator): each op runs once over the whole batch with per-sample
parameters, or over the contiguous rows that drew it (color_view).

Same definitions as the image-by-image CPU path (`fastdisco.augment.cpu`), in the same order;
tests/test_augment.py checks both against torchvision.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastdisco.augment import ops
from fastdisco.augment.recipes import blur_kernel_size, norm_consts


def crop_view(imgs: Tensor, params: dict[str, Tensor], resolution: int, antialias: bool = True) -> Tensor:
    """Geometry of one view on uint8 [B, 3, Hp, Wp] source images -> float [B, 3, res, res] in [0, 255].
    On an accelerator the antialiased resize is one batched op (ops.resized_crop_matmul: torch's
    resize weights as two batched matmuls, equal to the per-sample interpolate up to float
    rounding); on the CPU the per-sample interpolate (the CPU path's exact replays)."""
    if antialias and imgs.device.type != "cpu":
        return ops.resized_crop_matmul(imgs, params, resolution)
    if "resize" in params:  # eval: resize whole image, then center crop
        out = []
        for n, ((rh, rw), (t, l, hh, ww)) in enumerate(zip(params["resize"].long().tolist(), params["crop"].long().tolist())):
            H, W = params["src_size"][n].long().tolist()
            x = torch.nn.functional.interpolate(imgs[n : n + 1, :, :H, :W].float(), size=(rh, rw), mode="bilinear",
                                                align_corners=False, antialias=antialias)
            out.append(x[:, :, t : t + hh, l : l + ww])
        return torch.cat(out, 0)
    if antialias:
        return ops.resized_crop(imgs, params["crop"], resolution, antialias=True)
    return ops.resized_crop_grid(imgs, params["crop"], resolution)


# Columns of a view's packed per-sample plan (_plan): one host-to-device copy per view.
_A, _B, _C = 0, 4, 8          # the 4 jitter positions' linear coefficients (see _linear)
_GRAY, _HUE, _SIGMA, _SOLAR, _FLIP, _PERM, _INV = 12, 13, 14, 15, 16, 17, 18
_COLS = 19
NO_HUE = 4                     # hue position of a sample that draws no jitter


def _plan(params: dict[str, Tensor]) -> tuple[Tensor, list[int], list[int]]:
    """A view's random choices as one float [B, _COLS] CPU tensor, in the order the batch is
    processed in (samples grouped by the position at which they rotate the hue, those that blur
    first within each group: each op that does not apply to every row runs on contiguous slices,
    known here without a device sync), the groups' bounds and each group's number of blurred rows.

    The three linear jitter ops are one op with per-sample coefficients,
    y = clamp(a x + b gray(x) + c mean(gray(x))): brightness (f, 0, 0), contrast (f, 0, 1 - f),
    saturation (f, 1 - f, 0), nothing (1, 0, 0) -- the same float operations, so bit-identical."""
    f, order, jit = params["jitter_factors"].float(), params["jitter_order"].long(), params["jitter"].bool()
    B = f.shape[0]
    hue_pos = torch.where(jit, (order == 3).int().argmax(1), torch.full((B,), NO_HUE))
    blur = params["blur"].bool()
    perm = torch.argsort(hue_pos * 2 + (~blur).long(), stable=True)  # grouped by hue position, blur first
    plan = torch.zeros(B, _COLS)
    rows = torch.arange(B)
    for pos in range(4):
        k = order[:, pos]
        fk = f[rows, k]
        lin = jit & (k != 3)
        plan[:, _A + pos] = torch.where(lin, fk, torch.ones(B))
        plan[:, _B + pos] = torch.where(jit & (k == 2), 1.0 - fk, torch.zeros(B))
        plan[:, _C + pos] = torch.where(jit & (k == 1), 1.0 - fk, torch.zeros(B))
    plan[:, _GRAY] = params["gray"].float()
    plan[:, _HUE] = f[:, 3]
    plan[:, _SIGMA] = params["blur_sigma"].float()
    plan[:, _SOLAR] = params["solarize"].float()
    plan[:, _FLIP] = params["flip"].float()
    plan = plan[perm]
    plan[:, _PERM] = perm.float()                        # exact: B < 2^24
    plan[:, _INV] = torch.argsort(perm).float()
    counts = torch.bincount(hue_pos, minlength=NO_HUE + 1).tolist()
    bounds = [sum(counts[:k]) for k in range(NO_HUE + 2)]
    n_blur = torch.bincount(hue_pos[blur], minlength=NO_HUE + 1).tolist()
    return plan, bounds, n_blur


def _col(plan: Tensor, c: int) -> Tensor:
    return plan[:, c].view(-1, 1, 1, 1)


def _linear(x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """clamp(a x + b gray(x) + c mean(gray(x))) written into x, per-sample coefficients [B, 1, 1, 1]; with b or c
    zero the term adds an exact 0, so each jitter op gives the bits of its own definition (ops.py)."""
    g = ops.rgb_to_grayscale(x)
    m = g.mean(dim=(1, 2, 3), keepdim=True)
    return x.mul_(a).add_(g.mul_(b).add_(c * m)).clamp_(0.0, 1.0)  # in place: x is color_view's own copy


def color_view(x: Tensor, params: dict[str, Tensor], resolution: int) -> Tensor:
    """Photometric part of one view on float [B, 3, H, W] in [0, 1] (jitter in its drawn order,
    grayscale, blur, solarize, flip), in torchvision's order of the MoCo v2 / BYOL pipelines.

    Batched, for an accelerator: one host-to-device copy of the view's plan (_plan), then every
    op runs on the whole batch with per-sample coefficients or masks, or on one contiguous slice
    of it (hue at each position, blur): no per-op index tensors, no device sync. The batch is
    reordered once (a gather on the device) and restored once. Bit-identical to applying each
    sample's ops one by one (tests/test_augment_masked.py)."""
    plan, bounds, n_blur = _plan(params)
    plan = plan.to(x.device, non_blocking=True)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 else None
    x = _gather_rows(x, plan[:, _PERM].long())
    for pos in range(4):
        x = _linear(x, _col(plan, _A + pos), _col(plan, _B + pos), _col(plan, _C + pos))
        s, e = bounds[pos], bounds[pos + 1]
        if e > s:  # the samples that rotate the hue at this position
            x[s:e] = ops.adjust_hue(x[s:e], plan[s:e, _HUE])
    g = _col(plan, _GRAY)
    x = torch.lerp(x, ops.rgb_to_grayscale(x).expand_as(x), g) if bool(params["gray"].any()) else x
    if any(n_blur):
        x = _blur_rows(x, plan, bounds, n_blur, resolution)
    if bool(params["solarize"].any()):
        x = torch.where(_col(plan, _SOLAR) > 0, ops.solarize(x), x)
    if bool(params["flip"].any()):
        x = torch.where(_col(plan, _FLIP) > 0, ops.hflip(x), x)
    x = _gather_rows(x, plan[:, _INV].long())
    return x.contiguous(memory_format=fmt) if fmt is not None else x


def _gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """x[rows] in x's memory layout: a channels_last batch is gathered as the NHWC tensor it is
    in memory (index_select on the NCHW view of a channels_last tensor takes a slow strided path,
    ~100x slower on the CPU)."""
    if x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return x.index_select(0, rows)


def _blur_rows(x: Tensor, plan: Tensor, bounds: list[int], n_blur: list[int], resolution: int) -> Tensor:
    """Blur the rows that draw it: within each hue group they come first (_plan), so the blurred
    rows are at most five contiguous slices; the others are not touched (no delta-kernel convs)."""
    ks = blur_kernel_size(resolution)
    for grp, n in enumerate(n_blur):
        s = bounds[grp]
        if n:
            x[s : s + n] = ops.gaussian_blur(x[s : s + n], plan[s : s + n, _SIGMA], ks)
    return x


def normalize(x: Tensor, dtype: torch.dtype, channels_last: bool = True) -> Tensor:
    """[0, 1] float -> (x - mean) / std in `dtype`, channels_last memory format."""
    scale, bias = norm_consts(x.device, x.dtype)
    y = torch.addcmul(bias, x, scale).to(dtype)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y.contiguous()


