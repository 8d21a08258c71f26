"""Write the FFCV .beton from the finished shards, storing the *same* JPEG bytes.

FFCV's RGBImageField(write_mode='jpg') would decode-free re-encode every image with OpenCV,
giving a second lossy copy whose pixels differ from the webdataset shards. Instead a
pass-through field stores our JPEG bytes unchanged, so both formats decode to identical
pixels. FFCV records a field's type by its exact class, so after writing, the type byte of the
image field is set to RGBImageField's id: the file is then an ordinary .beton that the stock
ffcv Reader/Loader opens with RGBImageField (whose binary arguments are empty anyway).
"""
from __future__ import annotations

import bisect
import contextlib
import functools
import os
from pathlib import Path

import numpy as np
from ffcv.fields import IntField, RGBImageField  # import this module only after require("ffcv")
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.types import TYPE_ID_HANDLER, FieldDescType, HeaderType
from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter

from fastdisco.io import remove_stale_temps, temp_path


class JpegPassthroughField(RGBImageField):
    """Stores a sample's (jpeg uint8 array, width, height) as is, in FFCV's 'jpg' mode."""

    def encode(self, destination, sample, malloc):
        jpeg, width, height = sample
        destination["mode"] = IMAGE_MODES["jpg"]
        destination["height"], destination["width"] = height, width
        destination["data_ptr"], storage = malloc(jpeg.nbytes)
        storage[:] = jpeg


class ShardSamples:
    """Indexable view of all samples in the shards: (jpeg, label, index) per sample index.

    Worker processes (FFCV's own) open the tars lazily, one handle per process.
    """

    def __init__(self, out: Path, shards: list[dict], sizes: list[list[list[int]]]):
        from fastdisco.dataset.webdataset import read_index

        self.out = str(out)
        self.tars = [s["tar"] for s in shards]
        self.firsts = [s["first"] for s in shards]
        self.total = sum(s["count"] for s in shards)
        self.entries = [read_index(out / s["index"]) for s in shards]
        self.sizes = sizes  # per shard, per sample: [width, height, label]
        self._files: dict[int, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return self.total

    def _file(self, k: int):
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        if k not in self._files:
            self._files[k] = open(os.path.join(self.out, self.tars[k]), "rb")
        return self._files[k]

    def __getitem__(self, i: int):
        k = bisect.bisect_right(self.firsts, i) - 1
        j = i - self.firsts[k]
        m = self.entries[k][j]["jpg"]
        f = self._file(k)
        f.seek(m.offset)
        jpeg = np.frombuffer(f.read(m.size), dtype=np.uint8)
        width, height, label = self.sizes[k][j]
        return (jpeg, width, height), int(label), int(i)


@contextlib.contextmanager
def _ffcv_progress(enabled: bool, desc: str):
    """ffcv's writer always draws a tqdm bar; show it (with our label) only when asked."""
    import ffcv.writer
    from tqdm import tqdm

    saved = ffcv.writer.tqdm
    ffcv.writer.tqdm = functools.partial(tqdm, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True)
    try:
        yield
    finally:
        ffcv.writer.tqdm = saved


def write_beton(path: Path, samples: ShardSamples, max_side: int, quality: int,
                num_workers: int = 1, progress: bool = False) -> None:
    """Write data.beton atomically (to `.data.beton.PID@HOST.tmp`, then rename); temporary files
    that killed writers left behind are removed first."""
    fields = {
        "image": JpegPassthroughField(write_mode="jpg", max_resolution=max_side, jpeg_quality=quality),
        "label": IntField(),
        "index": IntField(),
    }
    # A page must hold the largest JPEG; FFCV's default (8 MiB) does unless max_side is huge.
    largest = max((e["jpg"].size for shard in samples.entries for e in shard), default=0)
    page = 4 * MIN_PAGE_SIZE
    while page < 2 * largest:
        page *= 2
    remove_stale_temps(path.parent, [path.name])
    tmp = temp_path(path)
    try:
        writer = DatasetWriter(str(tmp), fields, page_size=page, num_workers=max(1, num_workers))
        with _ffcv_progress(progress, f"prepare: {path.name}"):
            writer.from_indexed_dataset(samples, chunksize=64)
        rgb_id = {v: k for k, v in TYPE_ID_HANDLER.items()}[RGBImageField]
        with open(tmp, "r+b") as f:  # field 0 = image: mark it as a stock RGBImageField
            f.seek(HeaderType.itemsize + FieldDescType.fields["type_id"][1])
            f.write(bytes([rgb_id]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def beton_damage(path: str | os.PathLike, num_samples: int | None = None) -> str | None:
    """Why the .beton at `path` cannot be read in full (one phrase), or None. Reads only its header,
    field table, per-sample metadata and allocation table (stored at the end of the file), so a
    truncated file is found at once; damage inside a JPEG needs the checksum (`inspect --full`)."""
    import warnings

    from ffcv.reader import Reader

    size = os.path.getsize(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on short reads: they are reported below
            r = Reader(str(path))
    except Exception as e:  # a damaged header makes numpy / ffcv raise anything (e.g. negative dimensions)
        return f"unreadable header or allocation table ({e.__class__.__name__}: {str(e)[:100]}): truncated or damaged"
    n = int(r.num_samples)
    table_bytes = size - int(r.header["alloc_table_ptr"])
    if table_bytes < 0 or table_bytes % r.alloc_table.dtype.itemsize:
        return f"allocation table (at the end of the file) cut short at {size} bytes: truncated"
    if len(r.metadata) != n:
        return f"per-sample metadata cut short ({len(r.metadata)} of {n} samples): truncated"
    if num_samples is not None and n != int(num_samples):
        return f"{n} samples, manifest says {num_samples}"
    names = list(r.handlers)
    if "image" not in names:
        return f"no image field (fields {names})"
    ptrs = np.asarray(r.metadata[f"f{names.index('image')}"]["data_ptr"], dtype=np.int64)
    table = np.sort(r.alloc_table, order="ptr")
    at = np.searchsorted(table["ptr"], ptrs).clip(0, max(len(table) - 1, 0))
    if len(table) == 0 or not np.array_equal(table["ptr"][at].astype(np.int64), ptrs):
        bad = int(np.argmax(table["ptr"][at].astype(np.int64) != ptrs)) if len(table) else 0
        return f"sample {bad}: its image is missing from the allocation table: damaged or truncated"
    ends = ptrs + table["size"][at].astype(np.int64)
    if n and int(ends.max()) > size:
        return f"sample {int(np.argmax(ends > size))} and others lie beyond the end of the file ({size} bytes): truncated"
    return None


def check_beton(path: str | os.PathLike, num_samples: int | None = None) -> None:
    """A one-line FastdiscoError naming the file when beton_damage finds any."""
    from fastdisco.errors import FastdiscoError

    why = beton_damage(path, num_samples)
    if why:
        raise FastdiscoError(f"{path}: damaged .beton: {why}; re-copy the dataset or run prepare-data again "
                             "(`fastdisco inspect --full` checks every file)")
