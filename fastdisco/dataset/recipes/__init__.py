"""Per-dataset recipes for `fastdisco prepare-data --dataset NAME` (installed as
fastdisco.dataset.recipes). Each recipe module exposes `build_source(src, **options) -> Source`."""
from __future__ import annotations

import importlib

from fastdisco.errors import FastdiscoError

RECIPES = {
    "imagenet": "fastdisco.dataset.recipes.imagenet",
    "imagenet100": "fastdisco.dataset.recipes.imagenet100",
    "fashion-mnist": "fastdisco.dataset.recipes.fashion_mnist",
    "synthetic": "fastdisco.dataset.recipes.synthetic",
}


def build_source(name: str, src=None, **options):
    """The Source of named recipe `name` (src: its root folder, when it needs one)."""
    if name not in RECIPES:
        raise FastdiscoError(f"unknown dataset '{name}': choose from {', '.join(RECIPES)}")
    return importlib.import_module(RECIPES[name]).build_source(src, **options)
