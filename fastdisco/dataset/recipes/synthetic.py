"""Procedural, class-structured, seeded images of any size (fallback data, tests, benchmarks).

Class c has its own colour (hue), shape (disk / square / ring / triangle) and stripe texture
(orientation, frequency); each instance jitters position, scale, background and noise. A
small classifier learns the classes quickly, yet no two images are identical.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from fastdisco.dataset.sources import Source

SHAPES = ("disk", "square", "ring", "triangle")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def class_name(c: int) -> str:
    return f"class_{c:03d}"


def make_image(c: int, j: int, size: int | tuple[int, int] = 48, seed: int = 0,
               num_classes: int = 4) -> np.ndarray:
    """Instance j of class c as an HxWx3 uint8 array (deterministic in (seed, c, j))."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, c, j])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / max(h - 1, 1), xx / max(w - 1, 1)  # in [0, 1]

    hue = (c * 0.61803398875) % 1.0  # golden-ratio spacing keeps many classes apart
    colour = _hsv_to_rgb(hue, 0.85, 0.95)
    shape = SHAPES[c % len(SHAPES)]
    theta = math.pi * ((c // len(SHAPES)) * 0.38196601125 % 1.0)
    freq = 3.0 + (c % 5)

    cy, cx = rng.uniform(0.35, 0.65, size=2)
    r = rng.uniform(0.22, 0.34)
    dy, dx = yy - cy, xx - cx
    if shape == "disk":
        mask = dy**2 + dx**2 <= r**2
    elif shape == "square":
        mask = (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    elif shape == "ring":
        d = np.sqrt(dy**2 + dx**2)
        mask = (d <= r) & (d >= r * 0.55)
    else:  # triangle pointing up
        mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)

    phase = rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
    fg = colour[None, None, :] * (0.55 + 0.45 * stripes[..., None])
    bg = rng.uniform(0.05, 0.35, size=3)[None, None, :] * (0.8 + 0.2 * yy[..., None])
    img = np.where(mask[..., None], fg, bg)
    img = img + rng.normal(0.0, 0.04, size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_synthetic_folder(root: str | os.PathLike, num_classes: int = 4, per_class: int = 8,
                           size: int | tuple[int, int] = 48, seed: int = 0, ext: str = "png") -> Path:
    """Write a class-folder tree root/class_XXX/img_XXXXX.<ext> (png or jpg); return root."""
    from PIL import Image

    root = Path(root)
    ext = ext.lower().lstrip(".")
    if ext not in ("png", "jpg", "jpeg"):
        raise ValueError(f"ext must be png or jpg, got {ext}")
    for c in range(num_classes):
        d = root / class_name(c)
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = Image.fromarray(make_image(c, j, size, seed, num_classes))
            path = d / f"img_{j:05d}.{ext}"
            if ext == "png":
                img.save(path, compress_level=1)  # fast; size does not matter here
            else:
                img.save(path, quality=95)
    return root


class SyntheticSource(Source):
    """The same images generated on the fly (named recipe `--dataset synthetic`)."""

    kind = "synthetic"

    def __init__(self, num_classes: int = 10, per_class: int = 100, size: int = 64, seed: int = 0):
        names = [f"synthetic/{class_name(c)}/{j:05d}" for c in range(num_classes) for j in range(per_class)]
        labels = [c for c in range(num_classes) for _ in range(per_class)]
        super().__init__(names, labels, [class_name(c) for c in range(num_classes)], True,
                         {"num_classes": num_classes, "per_class": per_class, "size": size, "seed": seed})
        self.num_classes, self.per_class, self.size, self.seed = num_classes, per_class, size, seed

    def load(self, i: int):
        from PIL import Image

        c, j = self.labels[i], i % self.per_class
        return Image.fromarray(make_image(c, j, self.size, self.seed, self.num_classes))


# `fastdisco prepare-data --dataset` recipe: `--dataset synthetic [--num-classes C --per-class K --image-size S --seed N]`: procedural class-structured images generated on the fly (no SRC).
def build_source(src=None, num_classes: int | None = None, per_class: int | None = None,
                 image_size: int | None = None, seed: int | None = None, **_ignored) -> SyntheticSource:
    return SyntheticSource(num_classes=num_classes or 10, per_class=per_class or 100,
                           size=image_size or 64, seed=seed or 0)
