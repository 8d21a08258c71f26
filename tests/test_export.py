"""`fastdisco export`: the backbone round-trips through timm's pretrained path with strict keys
and identical outputs, both as OUT.safetensors and as a Hugging Face-style folder loaded with
`timm.create_model("local-dir:...", pretrained=True)`; head / key encoder / queue are left out;
the model card says what the model is; `export --help` needs no torch; ONNX matches PyTorch."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import fastdisco._compat  # noqa: F401  (torchvision import fix before timm)
import pytest
import safetensors.torch
import timm
import torch

from fastdisco.augment.recipes import IMAGENET_MEAN, IMAGENET_STD
from fastdisco.cli.main import main as cli_main
from fastdisco.config import Config, to_dict
from fastdisco.export import export_backbone, export_onnx, export_student, hf_load, timm_load
from fastdisco.io import atomic_torch_save, write_json
from fastdisco.models.student import build_student, make_key_encoder

NAME = "test_resnet"  # tiny timm test model with BatchNorm (running stats must survive the export)
REPO = Path(__file__).resolve().parent.parent


def make_run(tmp_path, name: str = NAME, num_classes: int = 0, method: str = "disco", seed: int = 0,
             teacher: str = "", data_path: str = ""):
    """A run directory with a checkpoint in the section-4 format; returns (run, student)."""
    assert (num_classes > 0) == (method == "ssld"), "ssld students keep a classifier, the others have none"
    torch.manual_seed(seed)
    cfg = Config()
    cfg.method.name = method
    cfg.model.student = name
    cfg.model.teacher = teacher
    cfg.model.proj_hidden, cfg.model.proj_dim, cfg.model.num_classes = 32, 16, max(num_classes, 1)
    cfg.data.resolution = 32
    cfg.data.path = data_path
    # The engine's own Student (docs/design.md section 3), grouped shuffle-BN included.
    student = build_student(cfg.model, method)
    # Make BN running statistics non-trivial, so a lost buffer would change the outputs.
    student.train()
    with torch.no_grad():
        student(torch.randn(4, 3, 32, 32))
    student.eval()
    key_encoder = make_key_encoder(student)
    ckpt = {
        "format": "fastdisco-ckpt-v1", "step": 7, "epoch": 1, "config": to_dict(cfg),
        "student_name": name, "student": student.state_dict(),
        "key_encoder": key_encoder.state_dict(), "queue": torch.randn(16, 64),
        "optimizer": {"state": {}, "param_groups": []}, "scaler": None,
        "rng": {"torch": torch.get_rng_state()}, "loader": {"epoch": 1, "batch": 0},
    }
    run = tmp_path / "run"
    atomic_torch_save(ckpt, run / "checkpoints" / "last.pt")
    return run, student


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt by timm to download is a test failure."""
    import timm.models._builder as builder

    def boom(*a, **k):
        raise AssertionError("timm tried the network")

    for fn in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file",
               "load_custom_from_hf"):
        monkeypatch.setattr(builder, fn, boom, raising=False)


def test_export_roundtrip_headless(tmp_path, no_network):
    run, student = make_run(tmp_path)
    out = tmp_path / "student.safetensors"
    side = export_student(run, out)
    saved = safetensors.torch.load_file(str(out))
    # Exactly the timm backbone's keys: no head, key encoder, queue or optimizer state.
    assert set(saved) == set(timm.create_model(NAME, num_classes=0).state_dict())
    assert not any(k.startswith(("head", "backbone.")) for k in saved)
    # The documented call, strict, and identical outputs to the checkpoint's backbone.
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(out), num_classes=0)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), student.backbone(x))
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"] == NAME and sidecar["num_classes"] == 0
    assert sidecar["input_size"] == [3, 32, 32]
    assert tuple(sidecar["mean"]) == IMAGENET_MEAN and tuple(sidecar["std"]) == IMAGENET_STD
    assert sidecar["source_checkpoint"]["step"] == 7 and sidecar["source_checkpoint"]["method"] == "disco"
    assert "provenance" in sidecar and "verified" in sidecar and sidecar["hf_dir"] == "student"
    assert "num_classes=0" in side["load"]
    assert export_backbone is export_student  # the former name still works


def test_hf_folder_loads_strictly_in_one_line(tmp_path, no_network):
    """The folder (timm's save_for_hf layout) loads with create_model("local-dir:...", pretrained=True):
    timm's own parser, strict keys, the same outputs as the checkpoint's backbone, fastdisco's
    eval preprocessing in its pretrained cfg."""
    run, student = make_run(tmp_path)
    out = tmp_path / "student.safetensors"
    side = export_student(run, out)
    folder = tmp_path / "student"
    assert side["hf_dir"] == str(folder)
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert side["hf_load"] == f"timm.create_model('local-dir:{folder.resolve()}', pretrained=True)"
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert model.num_classes == 0 and model.pretrained_cfg["source"] == "local-dir"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), student.backbone(x))
        # pretrained=True is what loads the weights: the same call without it is a random network.
        assert not torch.equal(timm.create_model(f"local-dir:{folder}").eval()(x), student.backbone(x))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == NAME and cfg["num_classes"] == 0 and cfg["model_args"]["num_classes"] == 0
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [3, 32, 32] and pc["crop_pct"] == 0.875 and pc["interpolation"] == "bilinear"
    assert tuple(pc["mean"]) == IMAGENET_MEAN and tuple(pc["std"]) == IMAGENET_STD
    assert "tag" not in pc and "license" not in pc  # timm's published weights' facts, not ours
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 32, 32) and tuple(data["mean"]) == IMAGENET_MEAN


def test_hf_folder_load_is_strict(tmp_path, no_network):
    """The one-line folder load refuses weights with an extra or a missing key."""
    run, _ = make_run(tmp_path)
    export_student(run, tmp_path / "s.safetensors")
    sd = safetensors.torch.load_file(str(tmp_path / "s" / "model.safetensors"))
    for case, bad, msg in (("extra", {**sd, "head.0.weight": torch.zeros(2, 2)}, "Unexpected key"),
                           ("missing", {k: v for k, v in sd.items() if k != "conv1.0.weight"}, "Missing key")):
        d = tmp_path / case
        shutil.copytree(tmp_path / "s", d)
        safetensors.torch.save_file(bad, str(d / "model.safetensors"))
        with pytest.raises(RuntimeError, match=msg):
            hf_load(d)


def test_timm_load_is_strict(tmp_path, no_network):
    """The load call we document must refuse a file with an extra or a missing key."""
    run, _ = make_run(tmp_path)
    out = tmp_path / "student.safetensors"
    export_student(run, out, hf_dir=False)
    assert not (tmp_path / "student").exists()
    sd = safetensors.torch.load_file(str(out))
    extra = tmp_path / "extra.safetensors"
    safetensors.torch.save_file({**sd, "head.0.weight": torch.zeros(2, 2)}, str(extra))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        timm_load(NAME, extra, 0)
    missing = tmp_path / "missing.safetensors"
    safetensors.torch.save_file({k: v for k, v in sd.items() if k != "conv1.0.weight"}, str(missing))
    with pytest.raises(RuntimeError, match="Missing key"):
        timm_load(NAME, missing, 0)


def _prepared_manifest(tmp_path, num_classes: int) -> Path:
    """A stand-in prepared dataset: only the manifest the model card reads."""
    data = tmp_path / "prepared"
    write_json(data / "manifest.json", {"num_samples": 1234, "num_classes": num_classes,
                                        "classes": [f"class_{i}" for i in range(num_classes)]})
    return data


def test_export_ssld_student_keeps_classifier(tmp_path, no_network):
    data = _prepared_manifest(tmp_path, 10)
    run, student = make_run(tmp_path, num_classes=10, method="ssld", teacher="resnet50", data_path=str(data))
    out = tmp_path / "ssld.safetensors"
    side = export_student(run, out, hf_dir=tmp_path / "hub" / "ssld-student")
    assert side["num_classes"] == 10
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = student.backbone(x)
        assert torch.equal(timm_load(NAME, out, 10).eval()(x), ref)
        folder = timm.create_model(f"local-dir:{tmp_path / 'hub' / 'ssld-student'}", pretrained=True).eval()
        assert folder.num_classes == 10 and torch.equal(folder(x), ref)
    # class names from the prepared dataset's manifest, in timm's config.json field
    assert json.loads((tmp_path / "hub" / "ssld-student" / "config.json").read_text())["label_names"][3] == "class_3"


def test_model_card(tmp_path, no_network):
    """README.md names method, teacher, data, length and the run's eval numbers, and its load line runs."""
    data = _prepared_manifest(tmp_path, 10)
    run, student = make_run(tmp_path, num_classes=10, method="ssld", teacher="resnet50", data_path=str(data))
    write_json(run / "provenance.json", {"date": "2026-01-02T03:04:05+00:00", "versions": {"fastdisco": "0.1.0"},
                                         "git": {"commit": "abc1234def", "dirty": False}, "world_size": 1})
    ev = run / "eval"
    write_json(ev / "knn.json", {"protocol": "knn", "top1": 61.234, "top5": 85.5, "model": {"step": 7},
                                 "data": {"val": "/data/val"}})
    write_json(ev / "linear_fast.json", {"protocol": "linear_fast", "top1": 70.125, "top5": 90.0,
                                         "model": {"step": 7}, "data": {"val": "/data/val"}})
    write_json(ev / "ssld.json", {"protocol": "ssld", "top1": 55.5, "top5": 80.25, "agreement_top1": 93.75,
                                  "model": {"step": 7}, "data": {"val": "/data/val"}})
    write_json(ev / "semi.json", {"protocol": "semi", "subsets": {"1%": {"top1": 12.5, "top5": 30.0}},
                                  "model": {"step": 7}, "data": {"val": "/data/val"}})
    side = export_student(run, tmp_path / "s.safetensors")
    card = (tmp_path / "s" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n")
    assert "SSLD" in card and "`resnet50`" in card and "`test_resnet`" in card
    assert f"`{data}`" in card and "1234 samples" in card and "10 classes" in card
    assert "7 optimizer steps" in card and "epoch 1" in card
    for row in ("| knn | 61.23 | 85.50 | 7 |", "| linear_fast | 70.12 | 90.00 | 7 |", "| ssld | 55.50 | 80.25 | 7 |",
                "| ssld teacher agreement | 93.75 | n/a | 7 |", "| semi 1% | 12.50 | 30.00 | 7 |"):
        assert row in card, row
    prov = side["provenance"]
    assert f"fastdisco {prov['versions']['fastdisco'] or fastdisco.__version__}" in card
    assert str(prov["git"]["commit"] or "unknown") in card and prov["date"] in card
    assert "commit abc1234def" in card  # the training run's own provenance
    # The exact one-line load call, run as written in the card.
    lines = [ln for ln in card.splitlines() if "timm.create_model(" in ln]
    assert lines == [f"model = {side['hf_load']}"]
    scope: dict = {"timm": timm}
    exec(lines[0], scope)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(scope["model"].eval()(x), student.backbone(x))


def test_model_card_without_evals_or_teacher(tmp_path, no_network):
    run, _ = make_run(tmp_path, method="mocov2")
    export_student(run, tmp_path / "m.safetensors")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "MoCo v2" in card and "Teacher: none." in card and "No `fastdisco eval` results" in card
    assert "| knn |" not in card


def test_export_cli_and_errors(tmp_path, capsys, no_network):
    run, student = make_run(tmp_path)
    out = tmp_path / "cli.safetensors"
    assert cli_main(["export", str(run / "checkpoints" / "last.pt"), str(out)]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file() and (tmp_path / "cli" / "config.json").is_file()
    printed = capsys.readouterr().out
    assert f"timm.create_model('local-dir:{(tmp_path / 'cli').resolve()}', pretrained=True)" in printed
    # --hf-dir elsewhere; --no-hf-dir none
    assert cli_main(["export", str(run), str(tmp_path / "a.safetensors"), "--hf-dir", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file() and not (tmp_path / "a").exists()
    assert cli_main(["export", str(run), str(tmp_path / "b.safetensors"), "--no-hf-dir"]) == 0
    assert (tmp_path / "b.safetensors").is_file() and not (tmp_path / "b").exists()
    capsys.readouterr()
    # runtime errors exit 1, usage errors 2, each one line
    assert cli_main(["export", str(tmp_path / "nope.pt"), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found" in err and len(err.splitlines()) == 1
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    assert cli_main(["export", str(other), str(out)]) == 1
    assert "not a fastdisco checkpoint" in capsys.readouterr().err
    assert cli_main(["export", str(run), str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["export", str(run), str(out), "--hf-dir", "d", "--no-hf-dir"])
    assert e.value.code == 2


_BLOCK_HEAVY = """
    import importlib.abc, sys
    HEAVY = ("torch", "timm", "safetensors", "numpy", "onnx", "fastdisco.export", "fastdisco.evaluation",
             "fastdisco.augment")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith(HEAVY):
                raise ImportError(f"blocked heavy import: {name}")

    sys.meta_path.insert(0, Block())
"""


def test_cli_module_imports_nothing_heavy_for_help():
    """fastdisco.cli.export on its own: importing it, adding its options, parsing a command line and
    printing --help never import torch, timm, safetensors or fastdisco.export (they are blocked)."""
    code = _BLOCK_HEAVY + """
    import argparse
    import fastdisco.cli.export as E

    p = argparse.ArgumentParser(prog="fastdisco export", description=E.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    E.add_arguments(p)
    a = p.parse_args(["run", "out.safetensors", "--hf-dir", "d"])
    assert a.ckpt == "run" and a.hf_dir == "d" and not a.no_hf_dir
    try:
        p.parse_args(["--help"])
    except SystemExit as e:
        assert e.code == 0
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "local-dir:OUT" in r.stdout and "--no-hf-dir" in r.stdout and "model card" in r.stdout


def test_fastdisco_export_help_does_not_import_torch():
    """The real entry point (`python -m fastdisco export --help`, as the console script runs it) leaves
    no torch, timm, safetensors or fastdisco.export in sys.modules. (-X importtime is not enough here:
    it does not list modules loaded through importlib.import_module, as the CLI loads its commands.)"""
    code = """
    import runpy, sys
    sys.argv = ["fastdisco", "export", "--help"]
    try:
        runpy.run_module("fastdisco", run_name="__main__")
    except SystemExit as e:
        assert e.code == 0, e.code
    assert "fastdisco.cli.export" in sys.modules
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "safetensors", "torchvision")
                   or m in ("fastdisco.export", "fastdisco.evaluation.backbone"))
    print("HEAVY", heavy)
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "local-dir:OUT" in r.stdout
    assert "HEAVY []" in r.stdout, r.stdout[-500:]


def test_onnx_missing_names_the_extra(tmp_path, monkeypatch, capsys, no_network):
    run, _ = make_run(tmp_path)
    out = tmp_path / "s.safetensors"
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    assert cli_main(["export", str(run), str(out), "--onnx", str(tmp_path / "s.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert "fastdisco[onnx]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.onnx").exists()


def test_onnx_matches_torch(tmp_path, no_network):
    pytest.importorskip("onnx")
    run, student = make_run(tmp_path)
    out = tmp_path / "s.safetensors"
    export_student(run, out, hf_dir=False)
    err = export_onnx(out, tmp_path / "s.onnx")
    assert err <= 1e-4 and (tmp_path / "s.onnx").is_file()
