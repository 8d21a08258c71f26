"""`fastdisco demo` (the quickstart's main job, `make demo`): the whole story on the embedded
default data, with the same commands a user runs.

1. prepare-data: Fashion-MNIST (Debian's dataset-fashion-mnist; a synthetic class-structured set
   if it is missing) -> webdataset shards + DALI index (+ FFCV .beton on GPU machines).
2. train the teacher: a resnet18 trained WITH LABELS (cross-entropy, one view per image). A
   self-supervised teacher strong enough to teach does not fit a 10-minute CPU budget
   (docs/results.md has the faithful DisCo test with a self-supervised MoCo v2 teacher).
3. train a small student (resnet10t) twice from the same seed (identical initial weights):
   MoCo v2 alone, and DisCo = MoCo v2 + pulling its final embedding to the teacher's pooled
   512-d embedding on both views (the official weight, `distill_reduction: sum`).
4. evaluate with kNN and a fast linear probe on the test split, next to two baselines every
   table needs: raw pixels and a randomly initialised resnet10t (BN statistics recalibrated);
   print a table, write runs/demo/results.json and, in a source checkout, one row per model
   (`role`: raw_pixels, random_init, teacher, student_alone, student_distilled) to
   benchmarks/results/demo.jsonl.

Every step is resumable: re-running skips prepared data, finished runs and finished evals.
Scale: `--scale cpu` (a 5,000-image subset at 32 px; about 10 minutes on a 2-core CPU) or
`--scale gpu` (the full 60,000 / 10,000 split, longer); `auto` picks by CUDA.
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

SCALES = {
    #        train  test  teacher ep  student ep  batch  workers  device/precision overrides
    "cpu": dict(train=5000, test=1000, teacher_epochs=8, student_epochs=4, batch=64, workers=1,
                extra=["train.device=cpu", "train.precision=fp32", "train.compile=false"]),
    "gpu": dict(train=60000, test=10000, teacher_epochs=30, student_epochs=20, batch=256, workers=8,
                extra=["train.device=cuda", "train.precision=bf16", "train.channels_last=true"]),
}


def _run(argv: list[str]) -> None:
    """Run one fastdisco command in-process, echoing it the way a user would type it."""
    from fastdisco.cli.main import main
    from fastdisco.errors import FastdiscoError

    print(f"\n$ fastdisco {shlex.join(argv)}", flush=True)
    rc = main(argv)
    if rc:
        raise FastdiscoError(f"step failed (exit {rc}): fastdisco {shlex.join(argv)}")


def _prepare(data: Path, s: dict, formats: str, progress: bool) -> tuple[Path, Path, str]:
    train, test = data / "train", data / "test"
    quiet = [] if progress else ["--no-progress"]
    if FMNIST.exists():
        name = "Fashion-MNIST"
        for split, out, n in (("train", train, s["train"]), ("test", test, s["test"])):
            if not (out / "manifest.json").exists():
                _run(["prepare-data", "--dataset", "fashion-mnist", "--split", split, "--limit", str(n),
                      "--format", formats, str(out)] + quiet)
    else:
        name = "synthetic (Fashion-MNIST not installed: apt-get install dataset-fashion-mnist)"
        per_train, per_test = s["train"] // 10, s["test"] // 10
        for out, per, seed in ((train, per_train, 0), (test, per_test, 1)):
            if not (out / "manifest.json").exists():
                _run(["prepare-data", "--dataset", "synthetic", "--num-classes", "10", "--per-class", str(per),
                      "--image-size", "32", "--seed", str(seed), "--format", formats, str(out)] + quiet)
    return train, test, name


def _train(config: str, sets: list[str]) -> None:
    argv = ["train", "--config", str(CONFIGS / config)]
    for item in sets:
        argv += ["--set", item]
    _run(argv)


def _speed(run: Path) -> float | None:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()] \
        if (run / "metrics.jsonl").exists() else []
    vals = [r["images_per_s"] for r in rows[1:] if "images_per_s" in r]  # first row includes warm-up
    return sum(vals) / len(vals) if vals else None


def _eval(run: Path, train: Path, test: Path, protocol: str, res: int, progress: bool, extra=()) -> dict:
    out = run / "eval" / f"{protocol}.json"
    if not out.exists():
        _run(["eval", protocol, str(run), "--train", str(train), "--val", str(test), "--resolution", str(res),
              "--num-workers", "1", "--out", str(out), *extra] + ([] if progress else ["--no-progress"]))
    return json.loads(out.read_text())


RESULTS_DOC = "docs/results.md"


def run_demo(args: argparse.Namespace) -> int:
    import torch

    t0 = time.time()
    scale = args.scale if args.scale != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    s = SCALES[scale]
    progress = not args.no_progress
    try:
        import ffcv  # noqa: F401
        formats = "ffcv,dali" if scale == "gpu" else "dali"
    except ImportError:
        formats = "dali"
    data, out = Path(args.data), Path(args.out)
    print(f"fastdisco demo: scale={scale} ({s['train']} train / {s['test']} test images), data -> {data}, runs -> {out}")

    train, test, dataset = _prepare(data, s, formats, progress)
    common = [f"data.path={train}", f"data.batch_size={s['batch']}", f"data.num_workers={s['workers']}",
              f"train.progress={str(progress).lower()}"] + s["extra"]
    teacher_run, mocov2_run, disco_run = out / "teacher", out / "student_mocov2", out / "student_disco"
    _train("demo_cpu_teacher.yaml", common + [f"train.out_dir={teacher_run}", f"train.epochs={s['teacher_epochs']}"])
    # The student's MoCo v2 baseline: the DisCo recipe minus the teacher and distillation.
    _train("demo_cpu_disco.yaml", common + [f"train.out_dir={mocov2_run}", f"train.epochs={s['student_epochs']}",
                                            "method.name=mocov2", "model.teacher=", "model.teacher_ckpt="])
    _train("demo_cpu_disco.yaml", common + [f"train.out_dir={disco_run}", f"train.epochs={s['student_epochs']}",
                                            f"model.teacher_ckpt={teacher_run / 'checkpoints' / 'last.pt'}"])

    res = 32
    models = [  # (role, method, label, run dir, extra eval args)
        ("raw_pixels", "none", "raw pixels (32 px, normalised)", out / "raw_pixels", ["--format", "raw_pixels"]),
        ("random_init", "none", "resnet10t random init, BN recalib.", out / "random_init",
         ["--format", "random_init", "--model", "resnet10t"]),
        ("teacher", "supervised", "teacher  resnet18, trained w/ labels", teacher_run, []),
        ("student_alone", "mocov2", "student  resnet10t MoCo v2 alone", mocov2_run, []),
        ("student_distilled", "disco", "student  resnet10t DisCo <- teacher", disco_run, []),
    ]
    rows = []
    for role, method, label, run, extra in models:
        knn = _eval(run, train, test, "knn", res, progress, extra)
        lin = _eval(run, train, test, "linear", res, progress, extra)
        rows.append({"role": role, "method": method, "model": label, "run": str(run), "knn_top1": knn["top1"],
                     "linear_top1": lin["top1"], "train_images_per_s": _speed(run)})
    wall = time.time() - t0

    from fastdisco.io import write_json
    from fastdisco.provenance import collect

    prov = collect()
    note = ("teacher: resnet18 trained with labels on the demo's train subset, distilled through its pooled "
            "embedding (not a self-supervised teacher: see docs/results.md for the faithful DisCo test)")
    write_json(out / "results.json", {"dataset": dataset, "scale": scale, "rows": rows, "wall_s": wall,
                                      "note": note, "provenance": prov})
    bench = REPO / "benchmarks" / "results"
    if bench.is_dir():  # a source checkout: one row per model, as docs/results.md reads them
        with open(bench / "demo.jsonl", "a") as f:
            for r in rows:
                f.write(json.dumps({"benchmark": "demo", "role": r["role"], "method": r["method"], "model": r["model"],
                                    "knn_top1": round(r["knn_top1"], 2), "linear_top1": round(r["linear_top1"], 2),
                                    "wall_s": round(wall, 1),
                                    "dataset": dataset, "scale": scale, "train_images": s["train"],
                                    "test_images": s["test"], "resolution": res, "note": note,
                                    "provenance": prov}, default=str) + "\n")
    print(f"\nfastdisco demo — {dataset}, {s['train']} train / {s['test']} test images at {res} px ({scale} scale)")
    print(f"{'model':<38} {'kNN top-1':>10} {'linear top-1':>13} {'train img/s':>12}")
    for r in rows:
        sp = "-" if r["train_images_per_s"] is None else f"{r['train_images_per_s']:.0f}"
        print(f"{r['model']:<38} {r['knn_top1']:>10.2f} {r['linear_top1']:>13.2f} {sp:>12}")
    print(f"\nThe teacher here was trained with labels. The faithful DisCo test (a self-supervised MoCo v2 "
          f"teacher, 3 seeds, full test split) and SSLD with unlabeled images: {RESULTS_DOC}")
    print(f"results: {out / 'results.json'}   ({wall:.0f} s)")
    return 0
