"""Where a result came from: versions, git commit, device, date. Stamped into every run
directory, prepared-dataset manifest and benchmark row."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import socket
import subprocess
from pathlib import Path

_PACKAGES = ("fastdisco", "torch", "torchvision", "timm", "triton", "nvidia-dali-cuda130", "ffcv", "numpy", "pillow")
_REPO = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo: Path = _REPO) -> dict[str, str | bool | None]:
    """Commit hash of the source tree and whether it had uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_info() -> dict:
    info: dict = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "host": socket.gethostname()}
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["device"] = torch.cuda.get_device_name(0)
            info["device_count"] = torch.cuda.device_count()
            info["cuda_version"] = torch.version.cuda
        else:
            info["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    except ImportError:
        info["device"] = "unknown (torch missing)"
    return info


def collect() -> dict:
    """Everything needed to say where a number came from."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git": git_commit(),
        "device": device_info(),
    }
