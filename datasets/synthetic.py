"""`--dataset synthetic [--num-classes C --per-class K --image-size S --seed N]`: procedural
class-structured images generated on the fly (no SRC)."""
from __future__ import annotations

from fastdisco.data.synthetic import SyntheticSource


def build_source(src=None, num_classes: int | None = None, per_class: int | None = None,
                 image_size: int | None = None, seed: int | None = None, **_ignored) -> SyntheticSource:
    return SyntheticSource(num_classes=num_classes or 10, per_class=per_class or 100,
                           size=image_size or 64, seed=seed or 0)
