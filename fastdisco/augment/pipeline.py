"""`Augment`: one recipe's augmentation, shared by every loader backend, on any device.

Params are drawn on the host (`params`); the images are then transformed where they are:
batched on an accelerator (`device`), image by image on the CPU (`cpu`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastdisco.augment.cpu import CpuPool, augment_cpu, photometric_cpu
from fastdisco.augment.device import color_view, crop_view, normalize
from fastdisco.augment.params import sample_params
from fastdisco.augment.recipes import recipe_views


class Augment:
    """The shared on-device part of every backend for one recipe (batched on an accelerator,
    image by image on the CPU, over `cpu_threads` threads; 0 = torch.get_num_threads())."""

    def __init__(self, recipe: str, resolution: int, dtype: torch.dtype = torch.float32,
                 channels_last: bool = True, antialias: bool = True, cpu_threads: int = 0):
        self.views = recipe_views(recipe)
        self.recipe = recipe
        self.resolution = resolution
        self.dtype = dtype
        self.channels_last = channels_last
        self.antialias = antialias
        self.cpu = CpuPool(cpu_threads or torch.get_num_threads())

    @property
    def num_views(self) -> int:
        return len(self.views)

    def sample(self, g: torch.Generator, heights: Tensor, widths: Tensor) -> list[dict[str, Tensor]]:
        return sample_params(g, self.views, heights, widths, self.resolution)

    def photometric(self, cropped: Tensor, params: dict[str, Tensor], out: Tensor | None = None) -> Tensor:
        """Cropped view (uint8 or float in [0, 255], [B, 3, res, res] on device) -> normalised view.
        out (CPU only): the batch to write into."""
        if cropped.device.type == "cpu":
            return photometric_cpu(cropped, params, self.resolution, self.dtype, self.channels_last, self.cpu, out)
        x = cropped.float().clamp(0.0, 255.0).div_(255.0)
        x = color_view(x, params, self.resolution)
        return normalize(x, self.dtype, self.channels_last)

    def __call__(self, imgs: Tensor, params: list[dict[str, Tensor]]) -> list[Tensor]:
        """Full pipeline on uint8 source images [B, 3, Hp, Wp] (ragged batch zero-padded)."""
        if imgs.device.type == "cpu":
            return augment_cpu(imgs, params, self.resolution, self.dtype, self.channels_last, self.antialias, self.cpu)
        return [self.photometric(crop_view(imgs, p, self.resolution, self.antialias), p) for p in params]


def apply_view(imgs: Tensor, params: dict[str, Tensor], resolution: int, dtype: torch.dtype = torch.float32,
               channels_last: bool = True, antialias: bool = True, crop_u8: bool = False) -> Tensor:
    """Replay one view exactly from its params (as returned in Batch.params). A view of the
    torch backend on a CPU device is replayed with crop_u8=True (it crops in uint8), from the images
    as it decoded them (loader.reduced_decode.decode_batch: the images and the params mapped onto
    them), or with data.reduced_decode=false from the full images and Batch.params as they are."""
    p = {k: v.cpu() for k, v in params.items()}
    if imgs.device.type == "cpu":
        return augment_cpu(imgs, [p], resolution, dtype, channels_last, antialias, crop_u8=crop_u8)[0]
    x = crop_view(imgs, p, resolution, antialias).clamp(0.0, 255.0).div_(255.0)
    x = color_view(x, p, resolution)
    return normalize(x, dtype, channels_last)
