"""`fastdisco export`: the backbone round-trips through timm's pretrained path with strict keys
and identical outputs; head / key encoder / queue are left out; ONNX matches PyTorch."""
from __future__ import annotations

import json
import sys

import fastdisco  # noqa: F401  (applies the torchvision import fix before timm)
import pytest
import safetensors.torch
import timm
import torch

from fastdisco.cli.main import main as cli_main
from fastdisco.config import Config, to_dict
from fastdisco.export import export_backbone, export_onnx, timm_load
from fastdisco.io import atomic_torch_save
from fastdisco.models.student import build_student, make_key_encoder

NAME = "test_resnet"  # tiny timm test model with BatchNorm (running stats must survive the export)


def make_run(tmp_path, name: str = NAME, num_classes: int = 0, method: str = "disco", seed: int = 0):
    """A run directory with a checkpoint in the section-4 format; returns (run, student)."""
    assert (num_classes > 0) == (method == "ssld"), "ssld students keep a classifier, the others have none"
    torch.manual_seed(seed)
    cfg = Config()
    cfg.method.name = method
    cfg.model.student = name
    cfg.model.proj_hidden, cfg.model.proj_dim, cfg.model.num_classes = 32, 16, max(num_classes, 1)
    cfg.data.resolution = 32
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

    for fn in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(builder, fn, boom, raising=False)


def test_export_roundtrip_headless(tmp_path, no_network):
    run, student = make_run(tmp_path)
    out = tmp_path / "student.safetensors"
    side = export_backbone(run, out)
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
    assert sidecar["input_size"] == [3, 32, 32] and len(sidecar["mean"]) == 3 and len(sidecar["std"]) == 3
    assert sidecar["source_checkpoint"]["step"] == 7 and sidecar["source_checkpoint"]["method"] == "disco"
    assert "provenance" in sidecar and "verified" in sidecar
    assert "num_classes=0" in side["load"]


def test_timm_load_is_strict(tmp_path, no_network):
    """The load call we document must refuse a file with an extra or a missing key."""
    run, _ = make_run(tmp_path)
    out = tmp_path / "student.safetensors"
    export_backbone(run, out)
    sd = safetensors.torch.load_file(str(out))
    extra = tmp_path / "extra.safetensors"
    safetensors.torch.save_file({**sd, "head.0.weight": torch.zeros(2, 2)}, str(extra))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        timm_load(NAME, extra, 0)
    missing = tmp_path / "missing.safetensors"
    safetensors.torch.save_file({k: v for k, v in sd.items() if k != "conv1.0.weight"}, str(missing))
    with pytest.raises(RuntimeError, match="Missing key"):
        timm_load(NAME, missing, 0)


def test_export_ssld_student_keeps_classifier(tmp_path, no_network):
    run, student = make_run(tmp_path, num_classes=10, method="ssld")
    out = tmp_path / "ssld.safetensors"
    side = export_backbone(run, out)
    assert side["num_classes"] == 10
    model = timm_load(NAME, out, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), student.backbone(x))


def test_export_cli_and_errors(tmp_path, capsys, no_network):
    run, _ = make_run(tmp_path)
    out = tmp_path / "cli.safetensors"
    assert cli_main(["export", str(run / "checkpoints" / "last.pt"), str(out)]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert cli_main(["export", str(tmp_path / "nope.pt"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found" in err and len(err.splitlines()) == 1
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    assert cli_main(["export", str(other), str(out)]) == 2
    assert "not a fastdisco checkpoint" in capsys.readouterr().err
    assert cli_main(["export", str(run), str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


def test_onnx_missing_names_the_extra(tmp_path, monkeypatch, capsys, no_network):
    run, _ = make_run(tmp_path)
    out = tmp_path / "s.safetensors"
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    assert cli_main(["export", str(run), str(out), "--onnx", str(tmp_path / "s.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "fastdisco[onnx]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.onnx").exists()


def test_onnx_matches_torch(tmp_path, no_network):
    pytest.importorskip("onnx")
    run, student = make_run(tmp_path)
    out = tmp_path / "s.safetensors"
    export_backbone(run, out)
    err = export_onnx(out, tmp_path / "s.onnx")
    assert err <= 1e-4 and (tmp_path / "s.onnx").is_file()
