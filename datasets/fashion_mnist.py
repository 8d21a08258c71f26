"""`--dataset fashion-mnist --split train|test [--limit N] [SRC]`: Debian's IDX files
(SRC defaults to /usr/share/datasets/fashion-mnist)."""
from __future__ import annotations

from fastdisco.data.fashion_mnist import FashionMnistSource


def build_source(src=None, split: str | None = None, **_ignored) -> FashionMnistSource:
    return FashionMnistSource(split or "train", src)
