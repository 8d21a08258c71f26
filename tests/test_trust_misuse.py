"""Misuse that used to run on silently (issue 16 items 4 and 7): a mistyped numeric label, resuming
with another architecture or other values, kNN across different class lists, a NaN teacher, a run
that skips every step, bare NaN in metrics.jsonl, a fastdisco teacher whose head was stripped."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastdisco.cli.main import main as cli_main
from fastdisco.errors import FastdiscoError, UsageError

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import TinyLoader, TinyTeacher, tiny_cfg  # noqa: E402


# --------------------------------------------------------------------------- file-list labels
def test_mistyped_numeric_label_is_refused_naming_the_line(tmp_path):
    from fastdisco.dataset.sources import MAX_NUMERIC_CLASSES, list_source

    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "ok.txt").write_text("0.png,0\n1.png,2\n2.png,1\n")
    assert list_source(tmp_path / "ok.txt").classes == ["0", "1", "2"]  # numeric labels stay indices
    (tmp_path / "typo.txt").write_text("0.png,0\n1.png,99999999\n2.png,1\n")
    with pytest.raises(FastdiscoError, match=r"typo\.txt:2: numeric label 99999999 is too large") as e:
        list_source(tmp_path / "typo.txt")
    assert len(str(e.value).splitlines()) == 1 and str(MAX_NUMERIC_CLASSES - 1) in str(e.value)
    # ... and through the CLI: one line, nothing written
    rc = cli_main(["prepare-data", str(tmp_path / "typo.txt"), str(tmp_path / "out"), "--format", "dali",
                   "--no-progress"])
    assert rc == 1 and not (tmp_path / "out" / "manifest.json").exists()
    # large ids written as names are fine: they are class names, not indices
    (tmp_path / "names.txt").write_text("0.png,n99999999\n1.png,n1\n")
    assert list_source(tmp_path / "names.txt").classes == ["n1", "n99999999"]


# --------------------------------------------------------------------------- resume with another config
def _run(tmp_path, **over):
    from fastdisco.engine.trainer import train

    cfg = tiny_cfg(tmp_path, "mocov2", train={"max_steps": 4, "ckpt_every": 2, "log_every": 2, **over.pop("train", {})},
                   **over)
    return cfg, train(cfg, loader=TinyLoader())


def test_resume_with_other_architecture_is_refused_readably(tmp_path):
    cfg, _ = _run(tmp_path, train={"stop_at": 2})
    before = (Path(cfg.train.out_dir) / "config.yaml").read_text()
    with pytest.raises(UsageError, match=r"cannot resume .*another architecture \(model\.proj_hidden 64 -> 32\)"):
        _run(tmp_path, model={"proj_hidden": 32}, train={"allow_config_change": True})
    with pytest.raises(UsageError, match=r"another architecture \(model\.student 'test_resnet' -> 'resnet10t'\)"):
        _run(tmp_path, model={"student": "resnet10t"})
    assert (Path(cfg.train.out_dir) / "config.yaml").read_text() == before  # not overwritten


def test_resume_with_other_values_needs_the_flag_and_says_what_changed(tmp_path, capsys):
    cfg, _ = _run(tmp_path, train={"stop_at": 2})
    run = Path(cfg.train.out_dir)
    before = (run / "config.yaml").read_text()
    with pytest.raises(UsageError, match=r"config differs .*optim\.lr 0\.3 -> 0\.6.*--allow-config-change"):
        _run(tmp_path, optim={"lr": 0.6})
    assert (run / "config.yaml").read_text() == before
    # values that do not change what a step computes need no flag (chunked jobs change stop_at)
    _run(tmp_path, train={"stop_at": 3, "log_every": 1})
    capsys.readouterr()
    cfg2, result = _run(tmp_path, optim={"lr": 0.6}, train={"allow_config_change": True})
    out = capsys.readouterr().out
    assert "changed config" in out and "optim.lr 0.3 -> 0.6" in out and result["step"] == 4
    assert "lr: 0.6" in (run / "config.yaml").read_text()
    assert "lr: 0.3" in (run / "config.before_step_00000003.yaml").read_text()


def test_cli_flag_allows_a_config_change(tmp_path):
    from fastdisco.config import build_config
    from fastdisco.cli.train import add_arguments
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--allow-config-change", "--print-config"])
    assert args.allow_config_change
    assert build_config(None, ["train.allow_config_change=true"]).train.allow_config_change


# --------------------------------------------------------------------------- NaN: teacher, skip-all, metrics
def test_nan_teacher_is_caught_on_the_first_batch(tmp_path):
    from fastdisco.engine.trainer import train

    teacher = TinyTeacher(128)
    with torch.no_grad():
        teacher.fc.weight[0, 0] = float("nan")
    cfg = tiny_cfg(tmp_path, "disco", train={"max_steps": 4, "nan_policy": "skip"})
    with pytest.raises(FastdiscoError, match=r"teacher .* non-finite weights: 1 of its weights are NaN/Inf"):
        train(cfg, loader=TinyLoader(), teacher=teacher)
    assert not (Path(cfg.train.out_dir) / "checkpoints" / "last.pt").exists()
    # finite weights whose output overflows: caught by the probe forward, before any step
    big = TinyTeacher(128)
    with torch.no_grad():
        big.fc.weight.fill_(3e38)
    with pytest.raises(FastdiscoError, match=r"teacher .* non-finite output on a probe batch .* overflows"):
        train(tiny_cfg(tmp_path / "big", "disco", train={"max_steps": 4}), loader=TinyLoader(), teacher=big)
    # a finite teacher trains
    result = train(tiny_cfg(tmp_path / "ok", "disco", train={"max_steps": 2}), loader=TinyLoader(),
                   teacher=TinyTeacher(128))
    assert result["step"] == 2


def test_skip_policy_that_skips_every_step_fails_and_metrics_stay_strict_json(tmp_path, capsys):
    from fastdisco.engine.trainer import train

    class AllNaN(TinyLoader):
        def __iter__(self):
            for b in super().__iter__():
                b.views = [v * float("nan") for v in b.views]
                yield b

    cfg = tiny_cfg(tmp_path, "mocov2", train={"max_steps": 4, "nan_policy": "skip"})
    with pytest.raises(FastdiscoError, match=r"every one of the 4 steps .* skipped .*never changed"):
        train(cfg, loader=AllNaN())
    lines = (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()

    def strict(token):
        raise ValueError(f"non-standard JSON constant {token}")

    rows = [json.loads(line, parse_constant=strict) for line in lines]  # bare NaN would raise
    assert rows and all(r["loss"] is None and "loss" in r["nonfinite"] for r in rows)
    # some (not all) steps skipped: a warning, and the run succeeds
    cfg = tiny_cfg(tmp_path / "some", "mocov2", train={"max_steps": 6, "nan_policy": "skip"})
    capsys.readouterr()
    assert train(cfg, loader=TinyLoader(poison_batch=3))["step"] == 6
    assert "warning: 1 of 6 steps had a non-finite loss" in capsys.readouterr().out


def test_strict_json_row():
    from fastdisco.engine.metrics import strict_json_row

    row = json.loads(strict_json_row({"step": 2, "loss": float("nan"), "lr": float("inf"), "ok": 1.5}))
    assert row == {"step": 2, "loss": None, "lr": None, "ok": 1.5, "nonfinite": ["loss", "lr"]}
    assert "nonfinite" not in json.loads(strict_json_row({"loss": 1.0}))
    assert not math.isnan(row["ok"])


# --------------------------------------------------------------------------- stripped fastdisco teacher head
def test_fastdisco_teacher_without_head_needs_proj_hidden_zero(tmp_path):
    from fastdisco.config import ModelConfig
    from fastdisco.engine.checkpoint import FORMAT, CheckpointManager
    from fastdisco.models.student import Student
    from fastdisco.models.teacher import load_teacher

    student = Student("test_resnet", head_hidden=64, head_dim=16, num_classes=0)
    sd = {k: v for k, v in student.state_dict().items() if not k.startswith("head.")}  # head stripped
    path = CheckpointManager(tmp_path / "run").save(
        {"format": FORMAT, "step": 1, "epoch": 0, "config": {"model": {"student": "test_resnet"}},
         "student_name": "test_resnet", "student": sd}, step=1)
    with pytest.raises(FastdiscoError, match=r"no projection head .*teacher_proj_hidden=2048 expects one"):
        load_teacher(ModelConfig(teacher_ckpt=str(path)), output="embedding")
    t = load_teacher(ModelConfig(teacher_ckpt=str(path), teacher_proj_hidden=0), output="embedding")
    assert t(torch.randn(2, 3, 32, 32)).shape == (2, student.backbone.num_features)


# --------------------------------------------------------------------------- kNN across class lists
def test_knn_maps_val_classes_by_name_or_refuses(tmp_path, capsys):
    import shutil

    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder
    from test_export import make_run

    src = write_synthetic_folder(tmp_path / "src", num_classes=3, per_class=4, size=24, ext="jpg")
    prepare_dataset(src, tmp_path / "train", formats="dali", workers=1)
    # val: the last two classes only, so its label 0 is train's label 1 (class_001)
    sub = tmp_path / "sub"
    for c in sorted(p.name for p in src.iterdir())[1:]:
        shutil.copytree(src / c, sub / c)
    prepare_dataset(sub, tmp_path / "val", formats="dali", workers=1)
    other = tmp_path / "other"
    shutil.copytree(src / sorted(p.name for p in src.iterdir())[0], other / "zebra")
    prepare_dataset(other, tmp_path / "val_other", formats="dali", workers=1)
    run, _ = make_run(tmp_path / "r", name="test_resnet")
    common = ["--resolution", "24", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-progress",
              "--k", "1"]
    # val images are train images: k=1 finds each one itself, so 100% only if labels mean the same class
    assert cli_main(["eval", "knn", str(run), "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
                     *common]) == 0
    rec = json.loads((run / "eval" / "knn.json").read_text())
    assert rec["top1"] == 100.0 and rec["settings"]["num_val"] == 8 and rec["data"]["val_classes_mapped_by_name"]
    capsys.readouterr()
    assert cli_main(["eval", "knn", str(run), "--train", str(tmp_path / "train"), "--val",
                     str(tmp_path / "val_other"), *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class lists" in err[0] and "'zebra'" in err[0]
