"""Never lose work: atomic checkpoints (docs/design.md section 4), keep-last-k, automatic resume,
and a SIGTERM/SIGINT guard that lets the loop save and exit cleanly.

RUN/checkpoints/step_%08d.pt is written atomically (temp file + fsync + rename), then
RUN/checkpoints/last.pt is atomically re-pointed at it (a hard link renamed over last.pt, or a
copy where links are not possible). A crash at any moment leaves a complete last.pt.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch

from fastdisco.errors import FastdiscoError, UsageError
from fastdisco.io import atomic_torch_save, safe_torch_load

FORMAT = "fastdisco-ckpt-v1"


class CheckpointManager:
    def __init__(self, run_dir: str | Path, keep: int = 2):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = max(1, keep)

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    def exists(self) -> bool:
        return self.last.is_file()

    def save(self, state: dict, step: int) -> Path:
        path = self.dir / f"step_{step:08d}.pt"
        atomic_torch_save(state, path)
        tmp = self.dir / f".last.pt.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, self.last)
        for old in sorted(self.dir.glob("step_*.pt"))[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load(self, path: str | Path | None = None) -> dict:
        state = safe_torch_load(path or self.last)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise FastdiscoError(f"{path or self.last} is not a {FORMAT} checkpoint")
        return state


# --------------------------------------------------------------------------- reading outside training
def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its `checkpoints/last.pt`; a file is itself."""
    p = Path(path)
    if p.is_dir():
        last = p / "checkpoints" / "last.pt"
        if not last.is_file():
            steps = sorted((p / "checkpoints").glob("step_*.pt")) if (p / "checkpoints").is_dir() else []
            hint = (f"; it holds {steps[-1]}: pass that file" if steps
                    else "; give a checkpoint file, or a run directory that has saved a checkpoint")
            raise FastdiscoError(f"no checkpoint in run directory {p}: it is a directory without "
                                 f"checkpoints/last.pt{hint}")
        return last
    if not p.exists():
        raise FastdiscoError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise FastdiscoError(f"checkpoint {p} is not a regular file")
    return p


def run_dir_of(ckpt: Path) -> Path | None:
    """RUN/checkpoints/x.pt -> RUN (None when the file does not sit in a run directory)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def load_checkpoint(path: str | Path) -> dict:
    """Read a run checkpoint for use outside training (eval, export, teacher), with weights_only=True."""
    p = resolve_checkpoint(path)
    ckpt = safe_torch_load(p)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise FastdiscoError(f"{p} is not a fastdisco checkpoint (format {found!r}, expected {FORMAT!r})")
    for key in ("student_name", "student"):
        if key not in ckpt:
            raise FastdiscoError(f"fastdisco checkpoint {p} lacks the key '{key}'")
    return ckpt


# --------------------------------------------------------------------------- RNG
# Exact resume: every random draw of training comes from a generator of its own, never from a
# stream another consumer may advance at another moment in a resumed run: the augmentation
# (ffcv's crop boxes included) from (data.seed, epoch, rank, batch) (augment.make_generator), the
# shuffle-BN permutation from the method's own generator (seeded with train.seed + rank, its
# state saved beside these), the torch loader's DataLoader from its own. The global RNGs (what a
# model's own dropout / drop-path draws from) are saved and restored as well.
def rng_state() -> dict:
    """Every global RNG a step may touch, as plain tensors / containers (weights_only-loadable)."""
    np_state = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- signals
class StopSignal:
    """Turns SIGTERM / SIGINT into a flag the loop checks once per step (a Python bool: no
    device sync). The loop then saves a checkpoint and exits cleanly. A second signal while
    saving is recorded, not acted on, so the checkpoint is never cut short."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def _handler(self, signum, frame):
        self.received = signum

    def __enter__(self) -> "StopSignal":
        try:
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread (e.g. some test runners): no handler
            self._old.clear()
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def __bool__(self) -> bool:
        return self.received is not None


# --------------------------------------------------------------------------- resume with another config
# The student's shape: a checkpoint cannot be loaded into another one.
ARCHITECTURE_KEYS = ("method.name", "model.student", "model.stem", "model.proj_hidden", "model.proj_dim",
                     "method.queue_size")
CLASSIFIER_KEYS = ("model.num_classes",)  # part of the shape for students that keep their classifier
# Values that never change what a step computes: a resume may change them freely.
NEUTRAL_KEYS = ("train.out_dir", "train.stop_at", "train.resume", "train.allow_config_change", "train.progress",
                "train.tensorboard", "train.keep_ckpts", "train.ckpt_every", "train.log_every", "train.compile",
                "train.dist_backend", "data.num_workers", "data.dali_threads")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(saved: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, value in the checkpoint, value now) for every config value that differs, except the
    NEUTRAL_KEYS; keys one side lacks (another fastdisco version) are not compared."""
    a, b = _flat(saved or {}), _flat(new)
    return [(k, a[k], b[k]) for k in b if k in a and a[k] != b[k] and k not in NEUTRAL_KEYS]


def _fmt(changes) -> str:
    return ", ".join(f"{k} {v0!r} -> {v1!r}" for k, v0, v1 in changes)


def check_resume_config(saved: dict, new: dict, allow: bool, where: str) -> list[tuple[str, object, object]]:
    """Refuse to resume `where` with another architecture (always) or other values (unless `allow`);
    return the changes that are allowed, for the caller to print."""
    changes = config_changes(saved, new)
    shape = ARCHITECTURE_KEYS + (CLASSIFIER_KEYS if _flat(new).get("method.name") in ("ssld", "supervised") else ())
    arch = [c for c in changes if c[0] in shape]
    if arch:
        raise UsageError(f"cannot resume {where}: its checkpoint has another architecture ({_fmt(arch)}); "
                         f"use a new train.out_dir (or train.resume=false to start over)")
    if changes and not allow:
        shown = _fmt(changes[:6]) + (f" and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise UsageError(f"cannot resume {where}: config differs from its checkpoint's ({shown}); re-run with "
                         f"--allow-config-change (train.allow_config_change=true) to resume with the new values, "
                         f"or use a new train.out_dir")
    return changes
