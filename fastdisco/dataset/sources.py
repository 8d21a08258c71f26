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
from collections import deque
from pathlib import Path
from typing import Any

from fastdisco.errors import FastdiscoError

UNLABELED = -1
# Numeric labels in a file list are class indices 0..max: one mistyped label (99999999) would
# otherwise make 100M classes (a GB-sized manifest, a 100M-way head). Larger ids must be names.
MAX_NUMERIC_CLASSES = 100_000


class Source:
    """Base: subclasses set names/labels/classes and implement load()."""

    kind: str = "source"

    def __init__(self, names: list[str], labels: list[int], classes: list[str], labeled: bool,
                 description: dict[str, Any]):
        assert len(names) == len(labels)
        self.names, self.labels = names, labels
        self.classes, self.labeled = classes, labeled
        self.skipped: list[list[str]] = []  # [name, reason] left out while listing (hidden, symlink loop)
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
        if n is not None and n < 1:
            from fastdisco.errors import UsageError

            raise UsageError(f"--limit must be at least 1, got {n}")
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


HIDDEN = "hidden"
LOOP = "symlink loop"


def _dir_id(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: the directory a link points at
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Walker:
    """Lists files below some folders, following directory symlinks, each directory once.

    Real sub-folders are walked first and symlinked ones afterwards (in the order found), so a
    folder reached both ways is listed where it really is: a link can never pull another class's
    folder into its own. A directory (by st_dev, st_ino) already walked is skipped: a "symlink
    loop" when it contains the link, a "duplicate folder" otherwise. Hidden entries (names starting
    with '.', e.g. .ipynb_checkpoints, .DS_Store) are skipped at every depth. Dangling links and
    other odd entries are kept as files: reading them fails later with a reason of their own."""

    def __init__(self, seen: set[tuple[int, int]]):
        self.seen = seen
        self.files: list[tuple[str, Any]] = []   # (relative path, tag)
        self.skipped: list[list[str]] = []       # [relative path, reason]
        self._links: deque[tuple[str, str, tuple, Any]] = deque()

    def add(self, path: str | os.PathLike, rel: str, chain: tuple, tag: Any) -> None:
        """Walk the folder `path` (listed as `rel`; `chain`: the ids of the folders containing it)."""
        self._walk(os.fspath(path), rel, chain, tag)

    def finish(self) -> None:
        while self._links:
            path, rel, chain, tag = self._links.popleft()
            self._enter(path, rel, chain, tag)

    def _enter(self, path: str, rel: str, chain: tuple, tag: Any) -> None:
        ident = _dir_id(path)
        if ident is None:
            self.files.append((rel, tag))  # vanished or unreadable: reported by the reader
        elif ident in chain:
            self.skipped.append([rel, f"{LOOP} (links back to a folder that contains it)"])
        elif ident in self.seen:
            self.skipped.append([rel, "duplicate folder (a symlink to a folder already included)"])
        else:
            self.seen.add(ident)
            self._walk(path, rel, chain + (ident,), tag)

    def _walk(self, path: str, rel: str, chain: tuple, tag: Any) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            self.skipped.append([rel or ".", f"unreadable folder: {e.__class__.__name__}: {e.strerror or e}"[:200]])
            return
        for e in entries:
            r = os.path.join(rel, e.name) if rel else e.name
            if e.name.startswith("."):
                self.skipped.append([r, HIDDEN + (" folder" if _is_dir(e) else "")])
            elif not _is_dir(e):
                self.files.append((r, tag))
            elif e.is_symlink():
                self._links.append((e.path, r, chain, tag))
            else:
                self._enter(e.path, r, chain, tag)


def walk_files(root: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """The files below `root` as sorted relative paths, and what was left out as [relative path,
    reason] rows (hidden entries, symlink loops, duplicate folders: see _Walker)."""
    root_id = _dir_id(root)
    w = _Walker({root_id} if root_id else set())
    w.add(root, "", (root_id,) if root_id else (), None)
    w.finish()
    return sorted(f for f, _ in w.files), sorted(w.skipped)


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()  # follows symlinks
    except OSError:
        return False


def folder_source(root: str | os.PathLike) -> FileSource:
    """Class folders (labels = index in sorted folder names) or a flat unlabeled folder.

    Hidden entries and symlinked folders seen before (loops, duplicates) are left out; they are
    listed in `src.skipped` ([path, reason] rows that prepare writes to skipped.tsv)."""
    root = Path(root)
    if not root.exists():
        raise FastdiscoError(f"source not found: {root}")
    if not root.is_dir():
        raise FastdiscoError(f"source is neither a folder nor a .txt/.csv file list: {root}")
    entries = sorted(os.listdir(root))
    skipped = [[e, HIDDEN + (" folder" if (root / e).is_dir() else "")] for e in entries if e.startswith(".")]
    entries = [e for e in entries if not e.startswith(".")]
    root_id = _dir_id(root)
    seen = {root_id} if root_id else set()
    class_dirs = []
    for e in entries:
        if not (root / e).is_dir():
            continue
        ident = _dir_id(root / e)
        if ident in seen:  # `SRC/x -> .` or two names for one folder: one class only
            skipped.append([e, LOOP + " (links back to the source folder)" if ident == root_id
                            else "duplicate folder (a symlink to a class folder already included)"])
            continue
        if ident is not None:
            seen.add(ident)
        class_dirs.append(e)
    if class_dirs:
        w = _Walker(seen)
        top = (root_id,) if root_id else ()
        for c, d in enumerate(class_dirs):
            ident = _dir_id(root / d)
            w.add(root / d, d, top + ((ident,) if ident else ()), c)
        w.finish()
        pairs = sorted(w.files, key=lambda f: (f[1], f[0]))  # class by class, then by path
        names, labels = [n for n, _ in pairs], [c for _, c in pairs]
        # Loose files beside class folders have no label: they are kept out (and reported by
        # prepare as skipped) instead of being mixed in as unlabeled.
        stray = [e for e in entries if e not in class_dirs and not (root / e).is_dir()]
        src = FileSource(root, names, labels, class_dirs, True, {"path": str(root.resolve()), "layout": "class-folders"})
        src.stray = stray  # type: ignore[attr-defined]
        src.skipped = sorted(skipped + w.skipped)  # type: ignore[attr-defined]
        return src
    names = [e for e in entries if not (root / e).is_dir()]
    src = FileSource(root, names, [UNLABELED] * len(names), [], False,
                     {"path": str(root.resolve()), "layout": "flat"})
    src.skipped = sorted(skipped)  # type: ignore[attr-defined]
    return src


def list_source(list_file: str | os.PathLike) -> FileSource:
    """A .txt/.csv list, one `path[,label]` per line; relative paths are relative to the list.

    Labels are integers (classes "0".."max", max below MAX_NUMERIC_CLASSES) or class names
    (classes = sorted names). A first line `path,label` is treated as a header.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FastdiscoError(f"source not found: {list_file}")
    rows, linenos = [], []
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
            linenos.append(lineno)
    raw = [lab for _, lab in rows if lab is not None]
    labeled = bool(raw)
    if all(_is_int(lab) for lab in raw):
        ints = [int(lab) for lab in raw]
        if ints and min(ints) < 0:
            raise FastdiscoError(f"{list_file}: negative label {min(ints)}")
        if ints and max(ints) >= MAX_NUMERIC_CLASSES:
            at = next(n for (_, lab), n in zip(rows, linenos) if lab is not None and int(lab) == max(ints))
            raise FastdiscoError(
                f"{list_file}:{at}: numeric label {max(ints)} is too large: numeric labels are class indices "
                f"0..{MAX_NUMERIC_CLASSES - 1} (a typo?); for other ids write class names (e.g. n01440764)")
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
