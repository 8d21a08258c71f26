"""Enumerate the inputs of `prepare-data` in a deterministic order.

A Source is an indexable list of (name, label) with a `load(i)` that returns file bytes or a
PIL image. Kinds: a folder of class sub-folders (labels from sorted folder names), a flat
folder (unlabeled, label -1), a txt/csv file list `path[,label]`, and named recipes
(fastdisco.dataset.recipes). Sources are pickled into worker processes, so they hold plain data.
"""
from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Any

from fastdisco.errors import FastdiscoError

UNLABELED = -1


class Source:
    """Base: subclasses set names/labels/classes and implement load()."""

    kind: str = "source"

    def __init__(self, names: list[str], labels: list[int], classes: list[str], labeled: bool,
                 description: dict[str, Any]):
        assert len(names) == len(labels)
        self.names, self.labels = names, labels
        self.classes, self.labeled = classes, labeled
        self.description = {"kind": self.kind, **description}

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int):
        """File bytes or a PIL image for input i; may raise OSError (listed as unreadable)."""
        raise NotImplementedError

    def digest(self) -> str:
        """Fingerprint of the input list: parts of one run must all see the same list."""
        h = hashlib.sha256()
        for n, l in zip(self.names, self.labels):
            h.update(n.encode("utf-8", "surrogateescape") + b"\0" + str(l).encode() + b"\n")
        return h.hexdigest()[:16]

    def limit(self, n: int | None) -> "Source":
        """Keep the first n inputs (the order is deterministic, so this is reproducible)."""
        if n is not None and n < len(self):
            self.names, self.labels = self.names[:n], self.labels[:n]
            self.description["limit"] = n
        return self


class FileSource(Source):
    """Inputs are files on disk; names are paths relative to `root` (absolute if outside)."""

    kind = "files"

    def __init__(self, root: Path, paths: list[str], labels: list[int], classes: list[str],
                 labeled: bool, description: dict[str, Any]):
        super().__init__(paths, labels, classes, labeled, description)
        self.root = str(root)

    def load(self, i: int) -> bytes:
        with open(os.path.join(self.root, self.names[i]), "rb") as f:
            return f.read()


def _files_under(root: Path) -> list[str]:
    """All non-directory entries below root (dangling links included: they get a skip
    reason), as sorted relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        out.extend(os.path.normpath(os.path.join(rel, f)) for f in filenames)
    return sorted(out)


def folder_source(root: str | os.PathLike) -> FileSource:
    """Class folders (labels = index in sorted folder names) or a flat unlabeled folder."""
    root = Path(root)
    if not root.exists():
        raise FastdiscoError(f"source not found: {root}")
    if not root.is_dir():
        raise FastdiscoError(f"source is neither a folder nor a .txt/.csv file list: {root}")
    entries = sorted(os.listdir(root))
    class_dirs = [e for e in entries if (root / e).is_dir() and not e.startswith(".")]
    if class_dirs:
        names, labels = [], []
        for c, d in enumerate(class_dirs):
            for f in _files_under(root / d):
                names.append(os.path.join(d, f))
                labels.append(c)
        # Loose files beside class folders have no label: they are kept out (and reported by
        # prepare as skipped) instead of being mixed in as unlabeled.
        stray = [e for e in entries if e not in class_dirs and not (root / e).is_dir()]
        src = FileSource(root, names, labels, class_dirs, True, {"path": str(root.resolve()), "layout": "class-folders"})
        src.stray = stray  # type: ignore[attr-defined]
        return src
    names = [e for e in entries if not (root / e).is_dir()]
    return FileSource(root, names, [UNLABELED] * len(names), [], False,
                      {"path": str(root.resolve()), "layout": "flat"})


def list_source(list_file: str | os.PathLike) -> FileSource:
    """A .txt/.csv list, one `path[,label]` per line; relative paths are relative to the list.

    Labels are integers (classes "0".."max") or class names (classes = sorted names).
    A first line `path,label` is treated as a header.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FastdiscoError(f"source not found: {list_file}")
    rows = []
    with open(list_file, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not row[0] or row[0].startswith("#"):
                continue
            if lineno == 1 and row[0].lower() == "path":
                continue
            if len(row) > 2:
                raise FastdiscoError(f"{list_file}:{lineno}: expected 'path[,label]', got {len(row)} fields")
            rows.append((row[0], row[1] if len(row) == 2 and row[1] != "" else None))
    raw = [lab for _, lab in rows if lab is not None]
    labeled = bool(raw)
    if all(_is_int(lab) for lab in raw):
        ints = [int(lab) for lab in raw]
        if ints and min(ints) < 0:
            raise FastdiscoError(f"{list_file}: negative label {min(ints)}")
        classes = [str(i) for i in range(max(ints) + 1)] if ints else []
        labels = [int(lab) if lab is not None else UNLABELED for _, lab in rows]
    else:
        classes = sorted(set(raw))
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[lab] if lab is not None else UNLABELED for _, lab in rows]
    root = list_file.parent
    names = [p for p, _ in rows]
    return FileSource(root, names, labels, classes, labeled,
                      {"path": str(list_file.resolve()), "layout": "file-list"})


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def path_source(src: str | os.PathLike) -> FileSource:
    """A folder (class folders or flat) or a .txt/.csv file list."""
    p = Path(src)
    if p.is_file() and p.suffix.lower() in (".txt", ".csv", ".lst"):
        return list_source(p)
    return folder_source(p)
