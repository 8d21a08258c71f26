"""The batched path (an accelerator): each op runs once over the rows of the batch that drew it.

Same definitions as the image-by-image CPU path (`fastdisco.augment.cpu`), in the same order;
tests/test_augment.py checks both against torchvision.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastdisco.augment import ops
from fastdisco.augment.recipes import blur_kernel_size, norm_consts


def crop_view(imgs: Tensor, params: dict[str, Tensor], resolution: int, antialias: bool = True) -> Tensor:
    """Geometry of one view on uint8 [B, 3, Hp, Wp] source images -> float [B, 3, res, res] in [0, 255]."""
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


def _rows(mask: Tensor, device: torch.device) -> Tensor | None:
    """Indices of the True rows, made from a CPU mask (no device sync), or None if empty."""
    idx = mask.nonzero().flatten()
    return idx.to(device, non_blocking=True) if idx.numel() else None


def _apply_rows(x: Tensor, mask: Tensor, fn) -> Tensor:
    """x[rows] = fn(x[rows], rows_cpu) for the rows where the CPU mask holds."""
    rows = _rows(mask, x.device)
    if rows is None:
        return x
    cpu_rows = mask.nonzero().flatten()
    x = x.clone() if x.requires_grad else x
    x.index_copy_(0, rows, fn(x.index_select(0, rows), cpu_rows))
    return x


def color_view(x: Tensor, params: dict[str, Tensor], resolution: int) -> Tensor:
    """Photometric part of one view on float [B, 3, H, W] in [0, 1] (jitter in its drawn order,
    grayscale, blur, solarize, flip), in torchvision's order of the MoCo v2 / BYOL pipelines.
    Batched (accelerator path): each op runs once on the rows that draw it."""
    f = params["jitter_factors"]
    order = params["jitter_order"]
    jit = params["jitter"]
    if bool(jit.any()):
        for pos in range(4):
            for k, fn in enumerate(ops.JITTER_OPS):
                # each sample runs op k at position pos of its own permutation
                sel = jit & (order[:, pos] == k)
                x = _apply_rows(x, sel, lambda xs, r, fn=fn, k=k: fn(xs, f[r, k]))
    x = _apply_rows(x, params["gray"], lambda xs, r: ops.grayscale3(xs))
    ks = blur_kernel_size(resolution)
    x = _apply_rows(x, params["blur"], lambda xs, r: ops.gaussian_blur(xs, params["blur_sigma"][r], ks))
    x = _apply_rows(x, params["solarize"], lambda xs, r: ops.solarize(xs))
    x = _apply_rows(x, params["flip"], lambda xs, r: ops.hflip(xs))
    return x


def normalize(x: Tensor, dtype: torch.dtype, channels_last: bool = True) -> Tensor:
    """[0, 1] float -> (x - mean) / std in `dtype`, channels_last memory format."""
    scale, bias = norm_consts(x.device, x.dtype)
    y = torch.addcmul(bias, x, scale).to(dtype)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y.contiguous()


