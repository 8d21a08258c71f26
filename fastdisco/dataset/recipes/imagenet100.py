"""`--dataset imagenet100 --split train|val SRC`: the 100-class ImageNet subset of CMC
(Tian et al., list from HobbitLong/CMC imagenet100.txt, stored here as imagenet100.txt).
SRC is a full ImageNet root; only the 100 listed wnids are read, labels are their sorted order."""
from __future__ import annotations

from pathlib import Path

from fastdisco.dataset.recipes.imagenet import build


def wnids() -> list[str]:
    lines = (Path(__file__).with_name("imagenet100.txt")).read_text().split()
    assert len(lines) == 100 and len(set(lines)) == 100, "imagenet100.txt must list 100 distinct wnids"
    return lines


def build_source(src=None, split: str | None = None, val_labels=None, **_ignored):
    return build(src, split or "train", wnids(), val_labels)
