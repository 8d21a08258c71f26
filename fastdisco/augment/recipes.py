"""Augmentation recipes: the distribution of each view, the input normalisation, the eval crop.

One definition per fact, imported wherever it is needed (loaders, teacher, export, mine):
IMAGENET_MEAN / IMAGENET_STD, EVAL_CROP_RATIO (resize to int(res / 0.875), centre crop res)
and the blur kernel size.

Recipes:
  mocov2  2 views: RRC(0.2-1), jitter(0.4,0.4,0.4,0.1) p=.8, gray p=.2, blur(.1-2) p=.5, flip
  byol    2 views: RRC(0.08-1), jitter(0.4,0.4,0.2,0.1) p=.8, gray p=.2, blur p=1.0 / 0.1,
          solarize p=0 / 0.2, flip
  ssld    1 view : RRC(0.08-1) + flip (shared by teacher and student)
  linear  1 view : RRC(0.08-1) + flip
  eval    1 view : resize shorter side to int(res / 0.875), center crop res
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fastdisco.errors import FastdiscoError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_RATIO = 0.875  # 224 / 256


@dataclass(frozen=True)
class ViewSpec:
    """The distribution of one view. Probabilities of 0 switch an op off."""

    crop: str = "rrc"                                # "rrc" | "center" (eval)
    scale: tuple[float, float] = (0.08, 1.0)         # RRC area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)      # RRC aspect range (log-uniform)
    flip_p: float = 0.5
    jitter_p: float = 0.0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # b, c, s, hue
    gray_p: float = 0.0
    blur_p: float = 0.0
    sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


_MOCO = ViewSpec(scale=(0.2, 1.0), jitter_p=0.8, gray_p=0.2, blur_p=0.5)
_BYOL = ViewSpec(scale=(0.08, 1.0), jitter_p=0.8, jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2)
RECIPES: dict[str, tuple[ViewSpec, ...]] = {
    "mocov2": (_MOCO, _MOCO),
    "byol": (replace(_BYOL, blur_p=1.0), replace(_BYOL, blur_p=0.1, solarize_p=0.2)),
    "ssld": (ViewSpec(),),
    "linear": (ViewSpec(),),
    "eval": (ViewSpec(crop="center", flip_p=0.0),),
}


def recipe_views(recipe: str) -> tuple[ViewSpec, ...]:
    if recipe not in RECIPES:
        raise FastdiscoError(f"config key 'data.recipe': unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    return RECIPES[recipe]


def blur_kernel_size(resolution: int) -> int:
    """Odd kernel of about 10% of the side (23 at 224, as BYOL / solo-learn)."""
    k = int(round(0.1 * resolution))
    return k + 1 if k % 2 == 0 else k


def norm_consts(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """(1 / std, -mean / std) as [1, 3, 1, 1]: normalising is one fused multiply-add."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    return ((1.0 / std).to(device, dtype).view(1, 3, 1, 1), (-mean / std).to(device, dtype).view(1, 3, 1, 1))
