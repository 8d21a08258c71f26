"""Where a result came from: versions, fastdisco's own commit and how it was installed, device,
date. Stamped into every run directory, prepared-dataset manifest, eval record, export and
benchmark row.

fastdisco's commit is read from the installed distribution, never guessed from the folder the
code happens to sit in (a wheel installed into a virtual environment inside the user's own
repository must not record the user's commit as fastdisco's):

- `importlib.metadata.distribution("fastdisco")` gives the version and, when pip recorded it,
  the PEP 610 `direct_url.json`:
  * editable install (`dir_info.editable` true): `url` is fastdisco's source tree; git is asked
    there, and only there, for the commit and whether the tree has uncommitted changes;
  * VCS install (`pip install git+https://...@rev`): `vcs_info.commit_id` is the commit (the
    installed files are that commit's, so `dirty` is False);
  * a local folder (not editable) or an archive (`archive_info`): a built copy; no commit;
  * no `direct_url.json` (installed from a package index): a wheel; no commit.
- The .egg-info that setuptools leaves in a source tree is a build by-product, not an install,
  and an installed copy whose files are not the ones imported does not count.
- Not installed (running from a checkout on `PYTHONPATH`): git is asked only when the folder
  above the package holds its own `.git` and a `pyproject.toml` that names fastdisco.

`collect()["install"]` says which case it was; `collect()["git"]` keeps its keys
(`commit`, `dirty`) for the readers of older records.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

_PACKAGES = ("fastdisco", "torch", "torchvision", "timm", "triton", "nvidia-dali-cuda130", "nvidia-dali-cuda120",
             "ffcv", "numpy", "numba", "pillow")
_DIST = "fastdisco"
_PACKAGE_DIR = Path(__file__).resolve().parent  # the fastdisco/ folder this code was imported from


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = None
    return out


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


def _git_tree(repo: Path) -> dict[str, str | bool | None]:
    """Commit of the git work tree at `repo` and whether tracked files differ from it."""
    sha = _git(repo, "rev-parse", "HEAD")
    if sha is None or sha.returncode != 0:
        return {"commit": None, "dirty": None}
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {"commit": sha.stdout.strip(), "dirty": None if dirty is None else bool(dirty.stdout.strip())}


def _file_url_path(url: str) -> Path | None:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _is_fastdisco_checkout(root: Path) -> bool:
    """`root` holds a git work tree (its own .git) and a pyproject.toml that names this project.
    Decided from the files alone: git is not run in a folder that may be someone else's."""
    if not (root / ".git").exists():
        return False
    try:
        text = (root / "pyproject.toml").read_text()
    except OSError:
        return False
    return re.search(r'(?m)^name\s*=\s*"fastdisco"\s*$', text) is not None


def _direct_url(dist) -> dict | None:
    try:
        raw = dist.read_text("direct_url.json")
        direct = json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None
    return direct if isinstance(direct, dict) else None


def _installed_copies():
    """Installed fastdisco distributions (.dist-info, which carry METADATA). The .egg-info folder
    that setuptools leaves in a source tree is a build by-product, not an install: skipped."""
    for dist in _md.distributions(name=_DIST):
        if dist.read_text("METADATA") is not None:
            yield dist


def install_info() -> dict:
    """How the imported fastdisco is installed, with its version and commit.

    Returns {"kind", "version", "commit", "dirty", "url", "path"} (+ "vcs", "requested_revision"
    for a VCS install); kind is one of "editable", "vcs", "directory" (a local folder, not
    editable), "archive" (a wheel or sdist given by path or URL), "wheel" (from a package index:
    no PEP 610 record), "source-tree" (not installed: imported from a fastdisco checkout) or
    "unknown". commit / dirty are None where the install does not record them.
    """
    for dist in _installed_copies():
        direct = _direct_url(dist)
        info: dict = {"kind": "unknown", "version": dist.version, "commit": None, "dirty": None,
                      "url": (direct or {}).get("url"), "path": str(_PACKAGE_DIR)}
        if direct is not None and (direct.get("dir_info") or {}).get("editable"):
            src = _file_url_path(direct.get("url") or "")
            if src is not None and _same(_PACKAGE_DIR.parent, src):  # this code is the editable tree
                info.update(kind="editable", path=str(src), **_git_tree(src))
                return info
            continue  # an editable install of another tree: not the code running here
        if not _same(_PACKAGE_DIR, Path(dist.locate_file(_DIST))):
            continue  # that copy's files are not the ones imported
        if direct is None:
            info["kind"] = "wheel"
        elif "vcs_info" in direct:
            vcs = direct["vcs_info"] or {}
            info.update(kind="vcs", commit=vcs.get("commit_id"), dirty=False, vcs=vcs.get("vcs"),
                        requested_revision=vcs.get("requested_revision"))
        elif "archive_info" in direct:
            info["kind"] = "archive"
        elif "dir_info" in direct:
            info["kind"] = "directory"
        return info

    # Not installed (this copy): imported from a folder on sys.path. Git is asked only when that
    # folder is the top of a fastdisco checkout, never in whatever repository happens to hold it.
    root = _PACKAGE_DIR.parent
    info = {"kind": "unknown", "version": _source_version(), "commit": None, "dirty": None, "url": None,
            "path": str(root)}
    if _is_fastdisco_checkout(root):
        info.update(kind="source-tree", **_git_tree(root))
    return info


def _source_version() -> str | None:
    try:
        from fastdisco import __version__

        return __version__
    except ImportError:
        return None


def git_commit(repo: Path | str | None = None) -> dict[str, str | bool | None]:
    """{"commit", "dirty"}: of the git work tree at `repo` when given; otherwise fastdisco's own,
    as `install_info()` finds it (None where the install does not record one)."""
    if repo is not None:
        return _git_tree(Path(repo))
    info = install_info()
    return {"commit": info["commit"], "dirty": info["dirty"]}


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
    install = install_info()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git": {"commit": install["commit"], "dirty": install["dirty"]},
        "install": install,
        "device": device_info(),
    }
