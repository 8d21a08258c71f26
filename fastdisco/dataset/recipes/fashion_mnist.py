"""Fashion-MNIST from Debian's `dataset-fashion-mnist` (IDX files, gzip) as a Source.

Images are 28x28 grayscale; prepare stores them as RGB JPEGs like every other image.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from fastdisco.dataset.sources import Source
from fastdisco.errors import FastdiscoError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed): uint8 data, big-endian dims."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise FastdiscoError(f"{path}: not a uint8 IDX file")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise FastdiscoError(f"{path}: truncated IDX file ({arr.size} of {int(np.prod(dims))} values)")
    return arr.reshape(dims)


def load_split(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images [N,28,28] uint8, labels [N] uint8) of one split."""
    if split not in FILES:
        raise FastdiscoError(f"fashion-mnist split must be train or test, got '{split}'")
    root = Path(root or DEFAULT_ROOT)
    img_f, lab_f = (root / f for f in FILES[split])
    for f in (img_f, lab_f):
        if not f.is_file():
            raise FastdiscoError(
                f"Fashion-MNIST file missing: {f} (install Debian's dataset-fashion-mnist, or give its folder as SRC)")
    images, labels = read_idx(img_f), read_idx(lab_f)
    if len(images) != len(labels):
        raise FastdiscoError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images, labels


class FashionMnistSource(Source):
    kind = "fashion-mnist"

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None):
        images, labels = load_split(split, root)
        self.images = images  # 47 MB for train: shared copy-on-write by forked workers
        super().__init__([f"fashion-mnist/{split}/{i:05d}" for i in range(len(labels))],
                         [int(x) for x in labels], list(CLASSES), True,
                         {"split": split, "path": str(Path(root or DEFAULT_ROOT).resolve())})

    def load(self, i: int):
        from PIL import Image

        return Image.fromarray(self.images[i], "L")


# `fastdisco prepare-data --dataset` recipe: `--dataset fashion-mnist --split train|test [--limit N] [SRC]`: Debian's IDX files (SRC defaults to /usr/share/datasets/fashion-mnist).
def build_source(src=None, split: str | None = None, **_ignored) -> FashionMnistSource:
    return FashionMnistSource(split or "train", src)
