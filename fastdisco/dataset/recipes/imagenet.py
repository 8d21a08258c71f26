"""`--dataset imagenet --split train|val SRC`: ILSVRC-2012 in its usual layouts.

SRC is the ImageNet root (holding train/ and val/) or the split folder itself.
- train/: one folder per wnid (n01440764/...). Classes are the sorted wnids, i.e. the index
  convention of torchvision's ImageFolder, so train and val labels agree.
- val/: either already in wnid folders (after the common valprep.sh), or flat
  (ILSVRC2012_val_00000001.JPEG ...) with labels from `--val-labels FILE`, or found
  automatically as LOC_val_solution.csv / val_labels.txt / ILSVRC2012_val_labels.txt in SRC or
  its parent. Accepted label files: Kaggle's LOC_val_solution.csv
  (`ImageId,PredictionString` whose first token is the wnid) or one `filename wnid` (space or
  comma separated; filename with or without extension) per line. The devkit's
  ILSVRC2012_validation_ground_truth.txt holds devkit ids, not wnids, and needs meta.mat: not
  supported; use one of the two formats above.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from fastdisco.dataset.sources import FileSource, folder_source
from fastdisco.errors import FastdiscoError

WNID = re.compile(r"^n\d{8}$")
LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt", "ILSVRC2012_val_labels.txt")


def _split_dir(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    if root.is_dir():
        return root  # SRC is the split folder itself
    raise FastdiscoError(f"source not found: {root}")


def _class_dirs(d: Path) -> list[str]:
    return sorted(e.name for e in d.iterdir() if e.is_dir() and WNID.match(e.name))


def read_val_labels(path: Path) -> dict[str, str]:
    """{file stem: wnid} from LOC_val_solution.csv or a `filename wnid` list."""
    out: dict[str, str] = {}
    with open(path, newline="") as f:
        text = f.read()
    if text.startswith("ImageId,PredictionString"):
        for row in csv.DictReader(text.splitlines()):
            out[row["ImageId"]] = row["PredictionString"].split()[0]
        return out
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 2 or not WNID.match(parts[1]):
            raise FastdiscoError(
                f"{path}:{lineno}: expected 'filename wnid' (or LOC_val_solution.csv); devkit ids "
                "(ILSVRC2012_validation_ground_truth.txt) are not supported")
        out[Path(parts[0]).stem] = parts[1]
    return out


def _find_label_file(root: Path, split_dir: Path) -> Path | None:
    for d in (split_dir, root, root.parent):
        for name in LABEL_FILES:
            if (d / name).is_file():
                return d / name
    return None


def build(src, split: str = "train", wnids: list[str] | None = None,
          val_labels: str | os.PathLike | None = None) -> FileSource:
    """ImageNet (or the subset `wnids`) as a labelled FileSource."""
    if src is None:
        raise FastdiscoError("--dataset imagenet needs SRC: the ImageNet root (with train/ and val/)")
    root = Path(src)
    if not root.exists():
        raise FastdiscoError(f"source not found: {root}")
    d = _split_dir(root, split)
    present = _class_dirs(d)
    if present:  # wnid folders (train, or val after valprep.sh)
        classes = sorted(wnids) if wnids else present
        missing = sorted(set(classes) - set(present))
        if missing:
            raise FastdiscoError(f"{d}: {len(missing)} class folders missing (e.g. {missing[0]})")
        full = folder_source(d)
        keep = set(classes)
        index = {c: i for i, c in enumerate(classes)}
        pairs = [(n, index[n.split(os.sep, 1)[0]]) for n in full.names if n.split(os.sep, 1)[0] in keep]
        desc = {"path": str(d.resolve()), "layout": "imagenet-class-folders", "split": split}
    else:  # flat val folder + labels file
        label_file = Path(val_labels) if val_labels else _find_label_file(root, d)
        if label_file is None:
            raise FastdiscoError(
                f"{d} has no wnid folders and no labels file: give --val-labels "
                "(LOC_val_solution.csv or 'filename wnid' lines)")
        labels = read_val_labels(label_file)
        train_dir = root / "train"
        all_classes = _class_dirs(train_dir) if train_dir.is_dir() else sorted(set(labels.values()))
        classes = sorted(wnids) if wnids else all_classes
        index = {c: i for i, c in enumerate(classes)}
        files = sorted(e.name for e in d.iterdir() if not e.is_dir())
        unlabeled = [f for f in files if Path(f).stem not in labels]
        if unlabeled and len(unlabeled) == len(files):
            raise FastdiscoError(f"{label_file}: none of the files in {d} has a label (e.g. {files[0]})")
        pairs = [(f, index[labels[Path(f).stem]]) for f in files
                 if Path(f).stem in labels and labels[Path(f).stem] in index]
        desc = {"path": str(d.resolve()), "layout": "imagenet-flat-val", "split": split,
                "val_labels": str(label_file.resolve())}
    if wnids:
        desc["classes_subset"] = len(classes)
    return FileSource(d, [n for n, _ in pairs], [l for _, l in pairs], classes, True, desc)


def build_source(src=None, split: str | None = None, val_labels=None, **_ignored) -> FileSource:
    return build(src, split or "train", None, val_labels)
