"""Crash-safe file writing: write to a temporary sibling, fsync, then rename.

A reader (or a resumed run) therefore sees either the old complete file or the new complete
file, never a half-written one, whatever kills the process (Ctrl-C, SIGKILL, power loss).
Temporary names carry the writer's pid and host (`.NAME.PID@HOST.XXXXXX.tmp`), so a re-run can
tell a temporary file left by a killed writer (remove_stale_temps) from one still being written.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator

# .NAME.PID@HOST[.RANDOM].tmp (this module's names) or .NAME.PID.tmp (older fastdisco versions)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9_-]+))?(?:\.[A-Za-z0-9_]+)?\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def temp_tag() -> str:
    """`PID@HOST`: who writes a temporary file (see remove_stale_temps)."""
    return f"{os.getpid()}@{_host()}"


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary sibling this process writes `path` through: `.NAME.PID@HOST.tmp`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{temp_tag()}.tmp")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporary files in `directory` (of the files `names`, or of any file) whose
    writer is dead: written on this host by a pid that no longer runs. Files of live writers and
    of other hosts (a shared file system) are kept. Returns the removed paths."""
    directory = Path(directory)
    keep_names = None if names is None else set(names)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    host = _host()
    for e in entries:
        m = _TEMP.match(e.name)
        if m is None or (keep_names is not None and m["name"] not in keep_names):
            continue
        if m["host"] not in (None, host) or pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(e.path)
            removed.append(Path(e.path))
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{temp_tag()}.", suffix=".tmp", dir=path.parent)
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


# Sentences of torch's weights_only error that are advice, not a diagnosis. fastdisco never
# suggests weights_only=False: loading a checkpoint must never run code from it.
_TORCH_ADVICE = re.compile(
    r"weights[_ ]only|will likely succeed|arbitrary code|trusted source|please file an issue|"
    r"check the documentation|internal miniz error|high likelihood|this can happen if", re.I)


def _torch_reason(e: BaseException) -> str:
    """The diagnosis in a torch.load error, without torch's advice (one short line)."""
    text = str(e).strip()
    if isinstance(e, EOFError) or not text:
        return "empty or truncated file" if isinstance(e, EOFError) else e.__class__.__name__
    kept = []
    for line in text.splitlines():
        for sentence in re.split(r"(?<=[.:])\s+", line.strip()):
            sentence = sentence.strip()
            if sentence and not _TORCH_ADVICE.search(sentence) and not sentence.endswith("error:"):
                kept.append(sentence)
    reason = " ".join(kept) or e.__class__.__name__
    if isinstance(e, (KeyError, IndexError, UnicodeDecodeError, ValueError, TypeError, AttributeError)):
        reason = f"{e.__class__.__name__}: {reason}"
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return reason.rstrip(".")


def safe_torch_load(path: str | os.PathLike, map_location="cpu"):
    """Load a checkpoint without ever executing code from it (weights_only=True).
    Every failure is a one-line FastdiscoError (never advice to load with weights_only=False)."""
    import torch

    from fastdisco.errors import FastdiscoError

    p = Path(path)
    if p.is_dir():
        hint = (f"; its run checkpoint would be {p / 'checkpoints' / 'last.pt'}, which does not exist"
                if not (p / "checkpoints" / "last.pt").is_file() else "")
        raise FastdiscoError(f"{p} is a directory, not a checkpoint file{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FastdiscoError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise FastdiscoError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # torch.load on a damaged or foreign file raises many types
        raise FastdiscoError(
            f"refusing to load {path}: not a plain-weights PyTorch checkpoint ({_torch_reason(e)}); "
            f"fastdisco loads checkpoints with weights_only=True only, so a checkpoint never runs code"
        ) from None
