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
- Not installed at all (running from a checkout on `PYTHONPATH`): git is asked only when the
  folder above the package is the top of a git work tree whose `pyproject.toml` is fastdisco's.

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
    """`root` is the top of a git work tree and its pyproject.toml names this project."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0 or not _same(Path(top.stdout.strip()), root):
        return False
    try:
        text = (root / "pyproject.toml").read_text()
    except OSError:
        return False
    return re.search(r'(?m)^name\s*=\s*"fastdisco"\s*$', text) is not None


def install_info() -> dict:
    """How the imported fastdisco is installed, with its version and commit.

    Returns {"kind", "version", "commit", "dirty", "url", "path"}; kind is one of
    "editable", "vcs", "directory" (a local folder, not editable), "archive" (a wheel or sdist
    given by path or URL), "wheel" (from a package index: no PEP 610 record), "source-tree"
    (not installed: imported from a checkout) or "unknown". commit / dirty are None where the
    install does not say.
    """
    info: dict = {"kind": "unknown", "version": None, "commit": None, "dirty": None, "url": None,
                  "path": str(_PACKAGE_DIR)}
    try:
        dist = _md.distribution(_DIST)
    except _md.PackageNotFoundError:
        dist = None

    if dist is not None:
        info["version"] = dist.version
        raw = dist.read_text("direct_url.json")
        try:
            direct = json.loads(raw) if raw else None
        except ValueError:
            direct = None
        if isinstance(direct, dict):
            url = direct.get("url")
            info["url"] = url
            dir_info = direct.get("dir_info") or {}
            if "vcs_info" in direct:
                vcs = direct["vcs_info"] or {}
                info.update(kind="vcs", commit=vcs.get("commit_id"), dirty=False,
                            vcs=vcs.get("vcs"), requested_revision=vcs.get("requested_revision"))
                return info
            if "archive_info" in direct:
                info["kind"] = "archive"
                return info
            if "dir_info" in direct:
                src = _file_url_path(url or "")
                if dir_info.get("editable") and src is not None:
                    if _same(_PACKAGE_DIR.parent, src):  # the code imported is the editable tree
                        info.update(kind="editable", path=str(src), **_git_tree(src))
                        return info
                    # an editable install exists, but this code was imported from elsewhere
                elif _same(_PACKAGE_DIR, Path(dist.locate_file(_DIST))):
                    info["kind"] = "directory"
                    return info
        elif _same(_PACKAGE_DIR, Path(dist.locate_file(_DIST))):
            info["kind"] = "wheel"
            return info

    # Not (this copy) installed: a checkout on sys.path. Ask git only in fastdisco's own tree.
    root = _PACKAGE_DIR.parent
    info.update(kind="source-tree", path=str(root), url=None, version=_source_version())
    if _is_fastdisco_checkout(root):
        info.update(_git_tree(root))
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
