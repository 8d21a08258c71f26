"""Random access to the webdataset shards of a prepared dataset (docs/design.md section 1).

Sample i is KEY = '%09d' % i with members KEY.jpg and KEY.cls. Member data offsets come from the
DALI index files next to each tar (wds2idx format 'v1.2 N', then per sample
'ext offset size name ...' with offsets of the member data), or, if an index is missing, from
one scan of the tar headers. Reading sample i is then two `pread`s, in any order, from any
process: what a shuffled, sharded, resumable loader needs.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastdisco.errors import FastdiscoError


def load_manifest(root: str | Path) -> dict:
    p = Path(root) / "manifest.json"
    if not p.is_file():
        raise FastdiscoError(f"config key 'data.path': {root} is not a prepared dataset (no manifest.json; "
                             "run `fastdisco prepare-data` first)")
    m = json.loads(p.read_text())
    if m.get("format_version") != 1:
        raise FastdiscoError(f"{p}: unsupported format_version {m.get('format_version')!r} (expected 1)")
    return m


def _members_from_idx(path: Path) -> list[dict[str, tuple[int, int]]]:
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("v1."):
        raise FastdiscoError(f"{path}: not a DALI webdataset index (first line {lines[:1]!r})")
    out = []
    for line in lines[1:]:
        f = line.split()
        comps = {}
        for k in range(0, len(f), 4):  # ext offset size name
            comps[f[k]] = (int(f[k + 1]), int(f[k + 2]))
        out.append(comps)
    return out


def _members_from_tar(path: Path) -> list[dict[str, tuple[int, int]]]:
    out: list[dict[str, tuple[int, int]]] = []
    last = None
    with tarfile.open(path) as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if key != last:
                out.append({})
                last = key
            out[-1][ext] = (m.offset_data, m.size)
    return out


@dataclass
class ShardIndex:
    """Where every sample's JPEG and label lie: arrays of length N."""

    tars: list[str]
    shard: np.ndarray       # int32 shard number
    jpg: np.ndarray         # int64 [N, 2] (offset, size)
    cls: np.ndarray         # int64 [N, 2] (offset, size); size 0 = no label member

    @classmethod
    def build(cls, root: str | Path, manifest: dict) -> "ShardIndex":
        root = Path(root)
        n = int(manifest["num_samples"])
        shard = np.zeros(n, np.int32)
        jpg = np.zeros((n, 2), np.int64)
        lab = np.zeros((n, 2), np.int64)
        tars = []
        for k, s in enumerate(manifest["shards"]):
            tar = root / s["tar"]
            idx = root / s["index"] if s.get("index") else None
            members = _members_from_idx(idx) if idx is not None and idx.is_file() else _members_from_tar(tar)
            if len(members) != int(s["count"]):
                raise FastdiscoError(f"{tar}: {len(members)} samples, manifest says {s['count']}")
            first = int(s["first"])
            for j, comps in enumerate(members):
                if "jpg" not in comps:
                    raise FastdiscoError(f"{tar}: sample {first + j} has no .jpg member")
                shard[first + j] = k
                jpg[first + j] = comps["jpg"]
                lab[first + j] = comps.get("cls", (0, 0))
            tars.append(str(tar))
        return cls(tars, shard, jpg, lab)


class SampleReader:
    """Reads (jpeg bytes, label) of sample i. Opens files lazily, per process (fork-safe)."""

    def __init__(self, index: ShardIndex):
        self.index = index
        self._fds: dict[int, int] = {}
        self._pid = -1

    def _fd(self, k: int) -> int:
        if self._pid != os.getpid():  # forked into a worker: do not share file offsets
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(k)
        if fd is None:
            fd = self._fds[k] = os.open(self.index.tars[k], os.O_RDONLY)
        return fd

    def jpeg(self, i: int) -> bytes:
        off, size = self.index.jpg[i]
        return os.pread(self._fd(int(self.index.shard[i])), int(size), int(off))

    def label(self, i: int) -> int:
        off, size = self.index.cls[i]
        if size == 0:
            return -1
        return int(os.pread(self._fd(int(self.index.shard[i])), int(size), int(off)).decode().strip())

    def __getstate__(self):
        return {"index": self.index}

    def __setstate__(self, st):
        self.__init__(st["index"])
