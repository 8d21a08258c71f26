"""Train and val sets must mean the same thing by a label: their classes are matched by name.

A label is an index into its own dataset's `classes` list (manifest.json). Two datasets prepared
from differently populated folders or lists can give one name two indices; comparing the raw
indices would then report a number that means nothing. So: identical lists pass; val classes
that all exist in train are mapped to train's indices by name; anything else is refused.
"""
from __future__ import annotations

from fastdisco.errors import FastdiscoError


def val_to_train_labels(train_classes: list[str], val_classes: list[str], train: str, val: str) -> list[int] | None:
    """None when the lists are identical, else train's index of every val class (by name)."""
    if list(train_classes) == list(val_classes):
        return None
    where = {c: i for i, c in enumerate(train_classes)}
    missing = [c for c in val_classes if c not in where]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FastdiscoError(f"the class lists of --train {train} and --val {val} differ: {len(missing)} val "
                             f"classes are not train classes ({shown}); prepare both from the same class names")
    return [where[c] for c in val_classes]
