"""Every random choice of a batch, drawn up front as CPU tensors from one generator.

Crop box, flip, colour-jitter factors and order, grayscale / blur / solarize flags and blur
sigmas come from one `torch.Generator` seeded from (seed, epoch, rank, batch). The params
travel with the batch, so any view can be replayed exactly (`pipeline.apply_view`), and a run
is deterministic whatever the device.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fastdisco.augment.recipes import EVAL_CROP_RATIO, ViewSpec


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """A well-mixed 63-bit seed for one (seed, epoch, rank, batch)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, rank, batch]).generate_state(2, np.uint64)[0] >> 1)


def make_generator(seed: int, epoch: int, rank: int, batch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(batch_seed(seed, epoch, rank, batch))
    return g


def sample_rrc(g: torch.Generator, heights: Tensor, widths: Tensor,
               scale: tuple[float, float], ratio: tuple[float, float], tries: int = 10) -> Tensor:
    """torchvision RandomResizedCrop.get_params, batched: [B] sizes -> [B, 4] (top, left, h, w).

    Up to `tries` draws of (area, log-aspect); the first that fits wins, its position uniform;
    if none fits, the whole image clamped to the aspect range, centred.
    """
    H = heights.double().view(-1, 1)
    W = widths.double().view(-1, 1)
    B = H.shape[0]
    area = H * W
    u_area = torch.rand(B, tries, generator=g, dtype=torch.float64)
    u_ratio = torch.rand(B, tries, generator=g, dtype=torch.float64)
    u_i = torch.rand(B, tries, generator=g, dtype=torch.float64)
    u_j = torch.rand(B, tries, generator=g, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr0 + (lr1 - lr0) * u_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    i = torch.floor(u_i * (H - h + 1))
    j = torch.floor(u_j * (W - w + 1))
    first = torch.argmax(ok.int(), dim=1, keepdim=True)  # index of the first fitting try
    any_ok = ok.any(dim=1)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    box = torch.stack([pick(i), pick(j), pick(h), pick(w)], dim=1)
    # fallback: torchvision's center crop at the clamped aspect ratio
    Hs, Ws = H.squeeze(1), W.squeeze(1)
    in_ratio = Ws / Hs
    fw = torch.where(in_ratio < min(ratio), Ws, torch.where(in_ratio > max(ratio), torch.round(Hs * max(ratio)), Ws))
    fh = torch.where(in_ratio < min(ratio), torch.round(Ws / min(ratio)), Hs)
    fb = torch.stack([torch.div(Hs - fh, 2, rounding_mode="floor"), torch.div(Ws - fw, 2, rounding_mode="floor"), fh, fw], 1)
    return torch.where(any_ok.view(-1, 1), box, fb).float()


def eval_resize(height: int, width: int, resolution: int, crop_ratio: float = EVAL_CROP_RATIO) -> tuple[int, int, int, int]:
    """The eval geometry for one image: torchvision Resize(int(res / crop_ratio)) then CenterCrop(res).
    Returns (resized height, resized width, crop top, crop left). `center_box` is its batched form."""
    short = int(resolution / crop_ratio)
    s = min(height, width)
    # torchvision: the short side becomes `short`, the long side int(short * long / short_side)
    rh = short if height <= width else int(short * height / s)
    rw = short if width <= height else int(short * width / s)
    return rh, rw, round((rh - resolution) / 2.0), round((rw - resolution) / 2.0)


def center_box(heights: Tensor, widths: Tensor, resolution: int,
               crop_ratio: float = EVAL_CROP_RATIO) -> tuple[Tensor, Tensor]:
    """`eval_resize` for a batch: the resized sizes [B, 2] and the crop box in resized pixels [B, 4]."""
    short = int(resolution / crop_ratio)
    H, W = heights.double(), widths.double()
    s = torch.minimum(H, W)
    rh = torch.where(H <= W, torch.full_like(H, short), torch.floor(short * H / s))
    rw = torch.where(W <= H, torch.full_like(W, short), torch.floor(short * W / s))
    top = torch.round((rh - resolution) / 2.0)
    left = torch.round((rw - resolution) / 2.0)
    res = torch.full_like(top, resolution)
    return torch.stack([rh, rw], 1).float(), torch.stack([top, left, res, res], 1).float()


def sample_view_params(g: torch.Generator, spec: ViewSpec, heights: Tensor, widths: Tensor,
                       resolution: int) -> dict[str, Tensor]:
    """Draw every parameter of one view for a batch (CPU tensors, leading dim B)."""
    B = heights.shape[0]
    p: dict[str, Tensor] = {"src_size": torch.stack([heights, widths], 1).float()}
    if spec.crop == "rrc":
        p["crop"] = sample_rrc(g, heights, widths, spec.scale, spec.ratio)
    else:
        p["resize"], p["crop"] = center_box(heights, widths, resolution)
    p["flip"] = torch.rand(B, generator=g) < spec.flip_p
    b, c, s, h = spec.jitter
    u = torch.rand(B, 4, generator=g)
    lo = torch.tensor([1 - b, 1 - c, 1 - s, -h])
    hi = torch.tensor([1 + b, 1 + c, 1 + s, h])
    p["jitter_factors"] = lo + (hi - lo) * u          # brightness, contrast, saturation, hue
    p["jitter_order"] = torch.argsort(torch.rand(B, 4, generator=g), dim=1)  # torchvision: randperm(4)
    p["jitter"] = torch.rand(B, generator=g) < spec.jitter_p
    p["gray"] = torch.rand(B, generator=g) < spec.gray_p
    p["blur"] = torch.rand(B, generator=g) < spec.blur_p
    p["blur_sigma"] = spec.sigma[0] + (spec.sigma[1] - spec.sigma[0]) * torch.rand(B, generator=g)
    p["solarize"] = torch.rand(B, generator=g) < spec.solarize_p
    return p


def sample_params(g: torch.Generator, views: tuple[ViewSpec, ...], heights: Tensor, widths: Tensor,
                  resolution: int) -> list[dict[str, Tensor]]:
    return [sample_view_params(g, v, heights, widths, resolution) for v in views]


def host_params(params: dict[str, Tensor]) -> dict[str, list]:
    """A view's params as Python lists, read once per batch (no per-op tensor indexing)."""
    return {k: v.tolist() for k, v in params.items()}


