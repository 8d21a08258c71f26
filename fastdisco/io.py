"""Crash-safe file writing: write to a temporary sibling, fsync, then rename.

A reader (or a resumed run) therefore sees either the old complete file or the new complete
file, never a half-written one, whatever kills the process (Ctrl-C, SIGKILL, power loss).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=False, default=str)
        f.write("\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def safe_torch_load(path: str | os.PathLike, map_location="cpu"):
    """Load a checkpoint without ever executing code from it (weights_only=True)."""
    import pickle

    import torch

    from fastdisco.errors import FastdiscoError

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FastdiscoError(f"checkpoint not found: {path}") from None
    except (pickle.UnpicklingError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise FastdiscoError(
            f"refusing to load {path}: it is not a plain-weights checkpoint loadable with "
            f"weights_only=True ({first})"
        ) from None
