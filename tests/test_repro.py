"""Smoke test of benchmarks/repro/run_fmnist.py at its smallest scale: one arm, one seed, kNN only,
commands run in-process. It must write one row with the fields docs/results.md is built from, and
a second call must skip that run (resumable)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks" / "repro"))

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_tiny_sweep_writes_rows_and_resumes(tmp_path, monkeypatch):
    import run_fmnist

    monkeypatch.chdir(ROOT)  # the recorded commands are relative to the repository root
    argv = ["--scale", "tiny", "--seeds", "0", "--arms", "mocov2", "raw_pixels", "--evals", "knn", "--inprocess",
            "--data-dir", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "res"), "--name", "smoke"]
    assert run_fmnist.main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "res" / "smoke.jsonl").read_text().splitlines()]
    assert [(r["arm"], r["role"]) for r in rows] == [("raw_pixels", "raw_pixels"), ("mocov2", "student_alone")]
    base, r = rows
    assert base["metrics"]["knn_top1"] is not None and "--format raw_pixels" in base["command"]["eval"]["knn"]
    assert set(r["metrics"]) >= {"knn_top1", "knn_top1_k10", "knn_top1_k20", "val_mean_cosine"}
    for key in ("experiment", "role", "arm", "seed", "scale", "metrics", "train_wall_s", "images_per_s", "command",
                "steps", "train_images", "test_images", "resolution", "note", "provenance"):
        assert key in r, key
    assert (r["experiment"], r["arm"], r["seed"], r["scale"]) == ("disco", "mocov2", 0, "tiny")
    assert r["steps"] == 2 and r["train_images"] == 64 and r["test_images"] == 32 and r["resolution"] == 32
    assert 0.0 <= r["metrics"]["knn_top1"] <= 100.0 and r["train_wall_s"] > 0 and r["images_per_s"] > 0
    assert r["command"]["train"].startswith("fastdisco train --config benchmarks/repro/ssl_cpu.yaml")
    assert "train.max_steps=2" in r["command"]["train"] and r["command"]["eval"]["knn"].startswith("fastdisco eval knn")
    # the kNN number is the eval file's, not recomputed
    ev = json.loads((Path(r["run_dir"]) / "eval" / "knn.json").read_text())
    assert ev["top1"] == r["metrics"]["knn_top1"]
    # resumable: a second call skips the run and appends nothing
    assert run_fmnist.main(argv) == 0
    assert len((tmp_path / "res" / "smoke.jsonl").read_text().splitlines()) == 2


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_tiny_mine_arm_trains_on_L_plus_mined_U(tmp_path, monkeypatch):
    """The SSLD + mine arm: the L-teacher mines the pool, picks inside L are dropped, L is added
    back whole, and the student trains on that prepared set (row carries the mine counts)."""
    import run_fmnist

    monkeypatch.chdir(ROOT)
    argv = ["--scale", "tiny", "--seeds", "0", "--arms", "ssld_Lmine", "--evals", "ssld", "--inprocess",
            "--data-dir", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "res"), "--name", "smoke"]
    assert run_fmnist.main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "res" / "smoke.jsonl").read_text().splitlines()]
    assert [r["arm"] for r in rows] == ["supervised_teacher_L", "ssld_Lmine"]
    r = rows[-1]
    mine, n_L = r["mine"], 32  # tiny scale: L = the first 32 of 64 train images
    assert mine["num_pool"] == 64 and 0 < mine["num_selected"] <= 2 * 10
    lst = (tmp_path / "data" / "Lmine_top2.txt").read_text().splitlines()
    from_l = [x for x in lst if x.startswith("mine_L_all/")]
    from_u = [x for x in lst if x.startswith("mine_U_top2/")]
    assert len(from_l) == n_L and len(lst) == len(from_l) + len(from_u)
    picked = [x.split(",") for x in (tmp_path / "data" / "mine_U_top2" / "selected.csv").read_text().splitlines()[1:]]
    assert len(from_u) == sum(int(i) >= n_L for i, *_ in picked)  # picks inside L are not added twice
    assert r["train_images"] == len(lst) and "linear_top1" in r["metrics"]
    assert any(c.startswith("fastdisco mine ") for c in r["command"]["prepare"])
