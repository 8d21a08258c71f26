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
