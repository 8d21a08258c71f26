"""Provenance names fastdisco's own version and commit, read from how it was installed (PEP 610
direct_url.json), and never the commit of a repository that merely contains the install."""
import json
import subprocess
from pathlib import Path

import pytest

from fastdisco import provenance

ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


def _git_repo(path: Path, files: dict[str, str]) -> str:
    """A real git repository at `path` with one commit of `files`; returns its HEAD."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    subprocess.run(GIT + ["init", "-q"], cwd=path, check=True)
    subprocess.run(GIT + ["add", "-A"], cwd=path, check=True)
    subprocess.run(GIT + ["commit", "-q", "-m", "x"], cwd=path, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True,
                          text=True).stdout.strip()


class FakeDist:
    """What importlib.metadata gives for an installed .dist-info: version, files, locations."""

    def __init__(self, site: Path, version: str = "9.9.9", direct_url: dict | None = None):
        self.site, self.version = site, version
        self.files = {"METADATA": f"Name: fastdisco\nVersion: {version}\n", "INSTALLER": "pip\n"}
        if direct_url is not None:
            self.files["direct_url.json"] = json.dumps(direct_url)

    def read_text(self, name):
        return self.files.get(name)

    def locate_file(self, path):
        return self.site / path


@pytest.fixture
def user_repo(tmp_path, monkeypatch):
    """A user's own git repository with a virtual environment inside it, where fastdisco's files
    were installed (site-packages/fastdisco); every git call is recorded."""
    repo = tmp_path / "user-project"
    user_head = _git_repo(repo, {"train_my_model.py": "print('mine')\n",
                                 "pyproject.toml": '[project]\nname = "my-project"\n'})
    site = repo / ".venv/lib/python3.11/site-packages"
    (site / "fastdisco").mkdir(parents=True)
    (site / "fastdisco/__init__.py").write_text("")
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", site / "fastdisco")

    calls = []
    real_run = subprocess.run

    def recording_run(cmd, *a, **kw):
        calls.append((list(cmd), str(kw.get("cwd"))))
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(provenance.subprocess, "run", recording_run)
    return repo, site, user_head, calls


def _install(monkeypatch, *dists):
    monkeypatch.setattr(provenance._md, "distributions", lambda name=None, **kw: list(dists))


def _no_git_in(repo: Path, calls) -> None:
    assert not [c for c in calls if c[0][0] == "git" and c[1].startswith(str(repo))], calls


def test_editable_install_here_is_this_repository_head():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    installed = [provenance._direct_url(d) or {} for d in provenance._installed_copies()]
    if not any((d.get("dir_info") or {}).get("editable") and d.get("url") == ROOT.as_uri() for d in installed):
        pytest.skip("fastdisco is not installed editable here (tools/install.sh installs it so)")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    p = provenance.collect()
    assert p["install"]["kind"] == "editable" and Path(p["install"]["path"]) == ROOT
    assert p["git"]["commit"] == head == p["install"]["commit"]
    assert isinstance(p["git"]["dirty"], bool)
    assert set(p) >= {"date", "versions", "git", "install", "device"}
    assert provenance.git_commit()["commit"] == head


def test_wheel_inside_a_users_repository_records_no_commit(user_repo, monkeypatch):
    repo, site, user_head, calls = user_repo
    _install(monkeypatch, FakeDist(site))  # from a package index: no direct_url.json
    p = provenance.collect()
    assert p["install"]["kind"] == "wheel" and p["install"]["version"] == "9.9.9"
    assert p["git"] == {"commit": None, "dirty": None} and user_head not in json.dumps(p)
    assert provenance.git_commit() == {"commit": None, "dirty": None}
    _no_git_in(repo, calls)


def test_vcs_install_records_the_installed_commit(user_repo, monkeypatch):
    repo, site, user_head, calls = user_repo
    sha = "0123456789abcdef0123456789abcdef01234567"
    _install(monkeypatch, FakeDist(site, direct_url={
        "url": "https://github.com/example/fastdisco.git",
        "vcs_info": {"vcs": "git", "commit_id": sha, "requested_revision": "v0.1.0"}}))
    info = provenance.install_info()
    assert info["kind"] == "vcs" and info["commit"] == sha and info["dirty"] is False
    assert info["requested_revision"] == "v0.1.0" and info["url"].startswith("https://")
    assert provenance.collect()["git"] == {"commit": sha, "dirty": False}
    _no_git_in(repo, calls)


@pytest.mark.parametrize("direct,kind", [
    ({"url": "file:///tmp/fastdisco-0.1.0-py3-none-any.whl", "archive_info": {"hashes": {}}}, "archive"),
    ({"url": "file:///tmp/fastdisco-src", "dir_info": {}}, "directory"),
])
def test_archive_and_folder_installs_record_no_commit(user_repo, monkeypatch, direct, kind):
    repo, site, user_head, calls = user_repo
    _install(monkeypatch, FakeDist(site, direct_url=direct))
    info = provenance.install_info()
    assert info["kind"] == kind and info["commit"] is None and info["url"] == direct["url"]
    _no_git_in(repo, calls)


def test_copy_not_installed_inside_a_users_repository(user_repo, monkeypatch):
    """fastdisco's files on sys.path inside someone else's repository, no install record that
    matches them (an editable install of another tree, a stray egg-info): no commit, no git."""
    repo, site, user_head, calls = user_repo
    other = FakeDist(site.parent / "elsewhere", direct_url={"url": "file:///somewhere/else",
                                                            "dir_info": {"editable": True}})
    _install(monkeypatch, other)
    info = provenance.install_info()
    assert info["kind"] == "unknown" and info["commit"] is None
    _no_git_in(repo, calls)


def test_source_checkout_of_fastdisco_not_installed(tmp_path, monkeypatch):
    """Running from a fastdisco checkout on PYTHONPATH: the checkout's own commit."""
    head = _git_repo(tmp_path / "fastdisco-src", {"pyproject.toml": '[project]\nname = "fastdisco"\n',
                                                  "fastdisco/__init__.py": ""})
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", tmp_path / "fastdisco-src/fastdisco")
    _install(monkeypatch)
    info = provenance.install_info()
    assert info["kind"] == "source-tree" and info["commit"] == head and info["dirty"] is False
    (tmp_path / "fastdisco-src/fastdisco/__init__.py").write_text("x = 1\n")
    assert provenance.install_info()["dirty"] is True


def test_editable_install_records_its_tree(tmp_path, monkeypatch):
    src = tmp_path / "fastdisco-src"
    head = _git_repo(src, {"pyproject.toml": '[project]\nname = "fastdisco"\n', "fastdisco/__init__.py": ""})
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", src / "fastdisco")
    _install(monkeypatch, FakeDist(tmp_path / "site", direct_url={"url": src.as_uri(),
                                                                  "dir_info": {"editable": True}}))
    info = provenance.install_info()
    assert info["kind"] == "editable" and info["commit"] == head and info["dirty"] is False


def test_git_commit_of_an_explicit_tree(tmp_path):
    head = _git_repo(tmp_path / "r", {"a.txt": "a"})
    assert provenance.git_commit(tmp_path / "r") == {"commit": head, "dirty": False}
    assert provenance.git_commit(tmp_path) == {"commit": None, "dirty": None}
