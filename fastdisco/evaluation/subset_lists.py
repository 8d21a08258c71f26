"""Label-subset list files -> sample indices of a prepared dataset.

A subset file lists one sample per line ('#' comments and blank lines ignored), as any of:
  - an image file name, as in SimCLR's ImageNet subsets (`imagenet_subsets/1percent.txt`,
    `10percent.txt` in google-research/simclr: `n01440764_10026.JPEG`), or a path relative to
    the source folder (`n01440764/n01440764_10026.JPEG`);
  - a sample index (manifest order) or a prepared key (`000000012`, `000000012.jpg`).

A prepared dataset keys its samples `%09d` and does not store the source file names, so names are
mapped through the source that `fastdisco prepare-data` read: the listing is redone (same walk,
same order), checked against the fingerprint the manifest recorded (`source.digest`), and the
inputs listed in `skipped.tsv` are removed; the i-th remaining name is sample i. The source is
the manifest's `source.path` unless `source` is given (the data moved, or a recipe such as
`--dataset imagenet` whose folder is its `train/`). A name that is not in the dataset is an
error that says how many and which, never a silently smaller subset.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fastdisco.errors import FastdiscoError


def read_subset_entries(path: str | Path) -> list[str]:
    """The non-empty, comment-stripped lines of a subset file."""
    p = Path(path)
    if not p.is_file():
        raise FastdiscoError(f"subset file not found: {p}")
    out = [line.split("#", 1)[0].strip() for line in p.read_text().splitlines()]
    out = [s for s in out if s]
    if not out:
        raise FastdiscoError(f"subset file {p} lists no samples")
    return out


def _as_index(entry: str) -> int | None:
    stem = Path(entry).stem if not entry.isdigit() else entry
    return int(stem) if stem.isdigit() else None


def sample_names(data: str | Path, source: str | Path | None = None) -> list[str]:
    """The source file name of every sample of prepared dataset `data`, in sample order."""
    data = Path(data)
    man = json.loads((data / "manifest.json").read_text())
    src_desc = man.get("source") or {}
    src = Path(source) if source else (Path(src_desc["path"]) if src_desc.get("path") else None)
    hint = "give --subset-source SRC: the folder or file list prepare-data read"
    if src is None or not src.exists():
        raise FastdiscoError(f"{data} keys its samples by number; file names are mapped through its source, "
                             f"{'which it does not record' if src is None else f'{src}, which does not exist'}: {hint}")
    from fastdisco.dataset.sources import path_source

    listing = path_source(src)
    if src_desc.get("limit"):
        listing.limit(int(src_desc["limit"]))
    want = src_desc.get("digest")
    if want and listing.digest() != want:
        raise FastdiscoError(f"{src} lists other inputs than {data} was prepared from (fingerprint "
                             f"{listing.digest()} vs {want}): {hint}")
    skipped = set()
    tsv = data / (man.get("skipped_path") or "skipped.tsv")
    if tsv.is_file():
        skipped = {line.split("\t", 1)[0] for line in tsv.read_text("utf-8", "surrogateescape").splitlines()}
    names = [n for n in listing.names if n not in skipped]
    if len(names) != int(man["num_samples"]):
        raise FastdiscoError(f"{src} gives {len(names)} inputs after the skipped ones, {data} holds "
                             f"{man['num_samples']} samples: {hint}")
    return names


def subset_indices(path: str | Path, data: str | Path, source: str | Path | None = None) -> list[int]:
    """Sample indices (sorted, unique) of the samples a subset file lists (module docstring)."""
    entries = read_subset_entries(path)
    as_idx = [_as_index(e) for e in entries]
    if all(i is not None for i in as_idx):
        return sorted(set(as_idx))
    names = sample_names(data, source)
    by_path = {n.replace(os.sep, "/"): i for i, n in enumerate(names)}
    by_base: dict[str, int] = {}
    for n, i in by_path.items():
        base = n.rsplit("/", 1)[-1]
        by_base[base] = -1 if base in by_base else i  # -1: two samples share this file name
    out, missing, ambiguous = set(), [], []
    for e in entries:
        key = e.replace("\\", "/")
        i = by_path.get(key, by_base.get(key.rsplit("/", 1)[-1]))
        if i is None:
            missing.append(e)
        elif i < 0:
            ambiguous.append(e)
        else:
            out.add(i)
    if missing or ambiguous:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(entries)} names are not in {data} (e.g. {', '.join(missing[:3])})")
        if ambiguous:
            parts.append(f"{len(ambiguous)} names match several samples (e.g. {ambiguous[0]}): list paths "
                         "relative to the source folder instead")
        raise FastdiscoError(f"subset file {path}: {'; '.join(parts)}")
    return sorted(out)
