"""The webdataset format of a prepared dataset: writer, reader and the ONE parser of its index.

Shards hold KEY.jpg + KEY.cls per sample (KEY = '%09d' % i), each with a DALI index next to it
(wds2idx format). Writing: `ShardWriter`, `write_index`, `renumber` (merging --part runs).
Reading: `load_manifest`, `ShardIndex` (where every sample's members lie, from the index files,
or one scan of the tar where an index is missing) and `SampleReader` (sample i is two `pread`s,
in any order, from any process: what a shuffled, sharded, resumable loader needs).

The tar is plain USTAR with fixed metadata (mtime 0, mode 0644, no owner), so the same samples
always give the same bytes: a resumed run equals an uninterrupted one byte for byte.

DALI index format, as written by DALI's bundled `wds2idx` (IndexCreator, version "v1.2"):
    line 1: "v1.2 <number of samples>"
    then one line per sample: "<ext> <data offset> <size> <member name>" for each member,
    joined by spaces, e.g. "jpg 512 1234 000000007.jpg cls 2560 1 000000007.cls".
The data offset is the byte offset of the member's data (its 512-byte header + 512).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from fastdisco.errors import FastdiscoError
from fastdisco.io import atomic_write

KEY_FORMAT = "%09d"
INDEX_VERSION = "v1.2"
BLOCK = 512


def key(i: int) -> str:
    return KEY_FORMAT % i


@dataclass
class Member:
    name: str
    offset: int  # of the data
    size: int


class ShardWriter:
    """Append samples to an open binary file as a tar; remember where each member's data is."""

    def __init__(self, f: IO[bytes]):
        self.tar = tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT)
        self.members: list[Member] = []

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        header_at = self.tar.offset
        self.tar.addfile(info, io.BytesIO(data))
        self.members.append(Member(name, header_at + BLOCK, len(data)))

    def add(self, index: int, jpeg: bytes, label: int) -> None:
        k = key(index)
        self._add(f"{k}.jpg", jpeg)
        self._add(f"{k}.cls", str(int(label)).encode("ascii"))

    def close(self) -> None:
        self.tar.close()  # writes the two zero end blocks + padding to the record size


def index_text(members: list[Member]) -> str:
    """The wds2idx text for members in tar order (consecutive members with one basename
    form one sample)."""
    samples: list[list[Member]] = []
    last = None
    for m in members:
        base, _ = split_name(m.name)
        if base != last:
            samples.append([])
            last = base
        samples[-1].append(m)
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for s in samples:
        lines.append(" ".join(f"{split_name(m.name)[1]} {m.offset} {m.size} {m.name}" for m in s))
    return "\n".join(lines) + "\n"


def split_name(name: str) -> tuple[str, str]:
    """Basename and extension as wds2idx splits them (at the first dot of the last path part)."""
    dot = name.find(".", name.rfind("/") + 1)
    return name[:dot], name[dot + 1:]


def write_index(idx_path: str | os.PathLike, members: list[Member]) -> None:
    with atomic_write(idx_path, "w") as f:
        f.write(index_text(members))
    os.chmod(idx_path, 0o644)  # readable by the other users of a shared dataset


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex): the checksum manifest.json records per shard, index and .beton."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """{"bytes", "sha256"} of a file, as stored in manifest.json."""
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def read_members(tar_path: str | os.PathLike) -> list[Member]:
    """Regular-file members of a tar with their data offsets (for re-indexing and checks)."""
    with tarfile.open(tar_path, mode="r:") as tar:
        return [Member(m.name, m.offset_data, m.size) for m in tar if m.isreg()]


def read_index(idx_path: str | os.PathLike) -> list[dict[str, Member]]:
    """Parse a wds2idx file (any "v1.x" version line) into one {ext: Member} per sample."""
    try:
        lines = Path(idx_path).read_text().splitlines()
    except UnicodeDecodeError:
        raise FastdiscoError(f"{idx_path}: damaged DALI index (not text)") from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1.") or not head[1].isdigit():
        raise FastdiscoError(f"{idx_path}: not a DALI webdataset index (first line {lines[:1]!r:.80})")
    out = []
    for n, line in enumerate(lines[1:1 + int(head[1])], 2):
        parts = line.split()
        sample = {}
        try:
            if not parts or len(parts) % 4:
                raise ValueError
            for j in range(0, len(parts), 4):
                ext, off, size, name = parts[j:j + 4]
                sample[ext] = Member(name, int(off), int(size))
        except ValueError:
            raise FastdiscoError(f"{idx_path}:{n}: damaged DALI index line {line[:80]!r}") from None
        out.append(sample)
    if len(out) != int(head[1]):
        raise FastdiscoError(f"{idx_path}: damaged DALI index ({len(out)} sample lines, header says {head[1]})")
    return out


def scan_samples(tar_path: str | os.PathLike) -> list[dict[str, Member]]:
    """What read_index gives, from the tar headers (a shard whose index is missing): consecutive
    members with one basename (split_name, as wds2idx splits it) form one sample."""
    out: list[dict[str, Member]] = []
    last = None
    for m in read_members(tar_path):
        base, ext = split_name(m.name)
        if base != last:
            out.append({})
            last = base
        out[-1][ext] = m
    return out


def renumber(tar_path: str | os.PathLike, first: int) -> list[Member]:
    """Rename the samples of a shard to first, first+1, ... in place and return its members.

    Used when merging `--part` runs: a part cannot know how many images earlier parts skipped,
    so its keys are provisional. Keys have a fixed width, so only the 512-byte headers change
    (name + checksum); the rewrite is idempotent, so an interrupted merge can simply run again.
    """
    members = read_members(tar_path)
    with tarfile.open(tar_path, mode="r:") as tar:
        infos = [m for m in tar if m.isreg()]
    order: dict[str, int] = {}
    new_members = []
    with open(tar_path, "r+b") as f:
        for info, m in zip(infos, members):
            base, ext = split_name(info.name)
            j = order.setdefault(base, len(order))
            new_name = f"{key(first + j)}.{ext}"
            if new_name != info.name:
                info.name = new_name
                header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
                assert len(header) == BLOCK, "fixed-width keys keep a one-block header"
                f.seek(info.offset)
                f.write(header)
            new_members.append(Member(new_name, m.offset, m.size))
        f.flush()
        os.fsync(f.fileno())
    return new_members


# --------------------------------------------------------------------------- reading
def load_manifest(root: str | Path) -> dict:
    p = Path(root) / "manifest.json"
    if not p.is_file():
        raise FastdiscoError(f"config key 'data.path': {root} is not a prepared dataset (no manifest.json; "
                             "run `fastdisco prepare-data` first)")
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FastdiscoError(f"{p}: damaged manifest (not valid JSON: {str(e)[:80]}); run prepare-data again") from None
    if not isinstance(m, dict) or m.get("format_version") != 1:
        if not isinstance(m, dict):
            raise FastdiscoError(f"{p}: damaged manifest (not a JSON object)")
        raise FastdiscoError(f"{p}: unsupported format_version {m.get('format_version')!r} (expected 1)")
    return m


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
            try:
                members = read_index(idx) if idx is not None and idx.is_file() else scan_samples(tar)
                size = tar.stat().st_size
            except (OSError, tarfile.TarError) as e:
                raise FastdiscoError(f"{tar}: unreadable shard ({e.__class__.__name__}: {str(e)[:120]})") from None
            def end(comps: dict[str, Member]) -> int:
                return max(m.offset + m.size for m in comps.values())

            if members and end(members[-1]) > size:  # cut short (copy interrupted, disk full): name the first lost sample
                lost = next(j for j, comps in enumerate(members) if end(comps) > size)
                raise FastdiscoError(f"{tar}: truncated ({size} bytes): sample {key(int(s['first']) + lost)} and later "
                                     "lie beyond its end; re-copy the dataset or run prepare-data again")
            if len(members) != int(s["count"]):
                raise FastdiscoError(f"{tar}: {len(members)} samples, manifest says {s['count']}")
            first = int(s["first"])
            for j, comps in enumerate(members):
                if "jpg" not in comps:
                    raise FastdiscoError(f"{tar}: sample {first + j} has no .jpg member")
                shard[first + j] = k
                jpg[first + j] = comps["jpg"].offset, comps["jpg"].size
                if "cls" in comps:
                    lab[first + j] = comps["cls"].offset, comps["cls"].size
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

    def where(self, i: int) -> str:
        """'SHARD sample KEY': how errors name a sample."""
        return f"{self.index.tars[int(self.index.shard[i])]} sample {key(i)}"

    def jpeg(self, i: int) -> bytes:
        off, size = self.index.jpg[i]
        try:
            data = os.pread(self._fd(int(self.index.shard[i])), int(size), int(off))
        except OSError as e:
            raise FastdiscoError(f"{self.where(i)}: unreadable ({e.strerror or e})") from None
        if len(data) != size:
            raise FastdiscoError(f"{self.where(i)}: shard truncated ({len(data)} of {int(size)} JPEG bytes)")
        return data

    def decoded(self, i: int, decode):
        """decode(jpeg bytes of sample i); a sample that does not decode is an error naming it."""
        return self.parse(i, self.jpeg(i), decode)

    def parse(self, i: int, data: bytes, decode):
        """decode(data), `data` being sample i's JPEG bytes already read; errors name the sample."""
        try:
            return decode(data)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # PIL raises several types for damaged data
            raise FastdiscoError(f"{self.where(i)}: damaged JPEG ({e.__class__.__name__}: {str(e)[:120]}); "
                                 "`fastdisco inspect --full` lists every damaged file") from None

    def label(self, i: int) -> int:
        off, size = self.index.cls[i]
        if size == 0:
            return -1
        raw = os.pread(self._fd(int(self.index.shard[i])), int(size), int(off))
        try:
            return int(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise FastdiscoError(f"{self.where(i)}: damaged label {raw[:20]!r}") from None

    def __getstate__(self):
        return {"index": self.index}

    def __setstate__(self, st):
        self.__init__(st["index"])
