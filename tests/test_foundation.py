"""The package skeleton: CLI dispatch without optional backends, crash-safe writes, provenance."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastdisco.cli import main as cli
from fastdisco.errors import FastdiscoError, MissingBackendError, require
from fastdisco.io import atomic_write, safe_torch_load, write_json
from fastdisco.provenance import collect


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("prepare-data", "train", "eval", "export"):
        assert name in out, f"subcommand {name} missing from --help"


def test_help_works_without_dali_and_ffcv():
    # Make DALI and ffcv unimportable, as on an install without the extras.
    code = textwrap.dedent(
        """
        import sys
        for m in ("nvidia", "nvidia.dali", "ffcv"):
            sys.modules[m] = None
        from fastdisco.cli import main as cli
        try:
            cli.main(["--help"])
        except SystemExit as e:
            sys.exit(e.code)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "prepare-data" in r.stdout


def test_missing_backend_is_one_line():
    with pytest.raises(MissingBackendError) as e:
        require("definitely_not_a_module_xyz", "dali", "install it with: pip install fastdisco[dali]")
    msg = str(e.value)
    assert "\n" not in msg and "dali" in msg and "pip install" in msg


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old complete content")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old complete content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"], "temporary file left behind"


def test_write_json_roundtrip(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1, "y": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1, "y": [1, 2]}


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_safe_torch_load_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": _Evil()}, path)
    with pytest.raises(FastdiscoError) as e:
        safe_torch_load(path)
    assert "weights_only" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
    assert torch.equal(safe_torch_load(tmp_path / "ok.pt")["w"], torch.ones(3))


def test_provenance_is_filled():
    p = collect()
    assert p["versions"]["torch"] == torch.__version__.split("+")[0] or p["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert p["device"]["cpu_count"] >= 1 and p["device"]["device"]
    assert p["date"][:2] == "20"
    assert "commit" in p["git"]


def test_wheel_has_no_generic_top_level_modules(tmp_path):
    """Everything installs under fastdisco/ (no generic top-level `kernels` / `datasets`), data files included."""
    import pathlib
    import zipfile

    import fastdisco.kernels

    assert fastdisco.kernels.__name__ == "fastdisco.kernels"
    repo = pathlib.Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), str(repo)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("fastdisco-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top <= {"fastdisco", f"fastdisco-{fastdisco_version()}.dist-info"}, top
    assert "fastdisco/kernels/__init__.py" in names and "fastdisco/dataset/recipes/__init__.py" in names
    assert "fastdisco/dataset/recipes/imagenet100.txt" in names


def fastdisco_version():
    import fastdisco

    return fastdisco.__version__
