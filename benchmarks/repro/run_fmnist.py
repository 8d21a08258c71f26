"""Issue 8: a small-scale reproduction of DisCo's and SSLD's claims on Fashion-MNIST, run through
the `fastdisco` CLI (every row records the exact commands that made it).

    nice python benchmarks/repro/run_fmnist.py --scale cpu --seeds 0 1 2

Experiments (arms; student resnet10t unless said otherwise):
  teacher  mocov2_teacher   resnet18 MoCo v2, longer than the students (seed 0 only)
           supervised_teacher  resnet18 cross-entropy on the labels (seed 0 only)
  disco    mocov2           MoCo v2 alone (head hidden 512, the paper's small-student baseline width)
           disco_h2048      DisCo from mocov2_teacher, head hidden 2048 (the bottleneck fix)
           disco_h512       DisCo from mocov2_teacher, head hidden 512
  ssld     ssld_symkl       symmetric KL to supervised_teacher on the train images, labels unused
           labels_only      cross-entropy on the labels (same student, same length)
SSL arms are scored by kNN and a fast linear probe (cached features) on the test split; the
classifier arms by `fastdisco eval ssld` (top-1, agreement with the supervised teacher).

Resumable: a run whose row is already in the results file is skipped; an interrupted training
resumes from its checkpoint (the engine does that for the same out_dir), finished evals are kept.
One JSON row per run goes to benchmarks/results/<--name>.jsonl through results_io.append_rows.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from results_io import append_rows, read_rows  # noqa: E402

STUDENT, TEACHER = "resnet10t", "resnet18"

# Lengths per scale. "cpu" is sized for ~40 min on a shared 2-core CPU (issue 8's budget);
# "tiny" is the smoke test's (a few steps on a few images; numbers meaningless).
SCALES: dict[str, dict] = {
    "tiny": {"train_limit": 64, "test_limit": 32, "teacher_len": "max_steps=3", "student_len": "max_steps=2",
             "batch_size": 16, "shuffle_bn_group": 8, "queue_size": 64, "linear_epochs": 5, "knn_k": 10},
    "cpu": {"train_limit": 10000, "test_limit": 2000, "teacher_len": "epochs=4", "student_len": "epochs=2",
            "batch_size": 64, "shuffle_bn_group": 16, "queue_size": 4096, "linear_epochs": 100, "knn_k": 200},
    "gpu": {"train_limit": 60000, "test_limit": 10000, "teacher_len": "epochs=100", "student_len": "epochs=30",
            "batch_size": 256, "shuffle_bn_group": 32, "queue_size": 16384, "linear_epochs": 100, "knn_k": 200},
}


@dataclass
class Arm:
    experiment: str
    arm: str
    recipe: str                      # benchmarks/repro/<recipe>.yaml
    method: str
    model: str
    length: str                      # "teacher" | "student": which scale length
    sets: list[str] = field(default_factory=list)
    teacher: str | None = None       # arm name of the teacher run this one needs
    evals: tuple[str, ...] = ("knn", "linear")
    seeds: str = "all"               # "all" | "first"


ARMS = [
    Arm("teacher", "mocov2_teacher", "ssl_cpu", "mocov2", TEACHER, "teacher", ["model.proj_hidden=2048"],
        seeds="first"),
    Arm("teacher", "supervised_teacher", "cls_cpu", "supervised", TEACHER, "teacher", evals=("ssld",),
        seeds="first"),
    Arm("disco", "mocov2", "ssl_cpu", "mocov2", STUDENT, "student", ["model.proj_hidden=512"]),
    Arm("disco", "disco_h2048", "ssl_cpu", "disco", STUDENT, "student", ["model.proj_hidden=2048"],
        teacher="mocov2_teacher"),
    Arm("disco", "disco_h512", "ssl_cpu", "disco", STUDENT, "student", ["model.proj_hidden=512"],
        teacher="mocov2_teacher"),
    Arm("ssld", "ssld_symkl", "cls_cpu", "ssld", STUDENT, "student", teacher="supervised_teacher", evals=("ssld",)),
    Arm("ssld", "labels_only", "cls_cpu", "supervised", STUDENT, "student", teacher="supervised_teacher",
        evals=("ssld",)),
]
BY_NAME = {a.arm: a for a in ARMS}


def fastdisco_cmd(args: list[str]) -> tuple[list[str], str]:
    """(argv to run, the command as a user types it)."""
    return [sys.executable, "-m", "fastdisco", *args], shlex.join(["fastdisco", *args])


INPROCESS = False  # --inprocess: call fastdisco.cli.main in this process (no interpreter start-up per command)


def run_logged(argv: list[str], log: Path) -> float:
    """Run `argv` from the repo root, appending its output to `log`; returns wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(argv)}\n")
        f.flush()
        if INPROCESS:
            import contextlib

            from fastdisco.cli.main import main as cli_main

            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                rc = cli_main(argv[3:])  # argv = [python, -m, fastdisco, ...]
        else:
            rc = subprocess.call(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"run_fmnist: command failed (rc {rc}), see {log}: {shlex.join(argv)}")
    return time.perf_counter() - t0


def prepare(split: str, limit: int, out: Path, log: Path) -> str:
    """Fashion-MNIST split -> prepared dataset (skipped when complete). Returns the command."""
    argv, cmd = fastdisco_cmd(["prepare-data", "--dataset", "fashion-mnist", "--split", split, "--limit", str(limit),
                               "--no-progress", str(out)])
    if not (out / "manifest.json").is_file():
        run_logged(argv, log)
    return cmd


def run_dir(args, arm: Arm, seed: int) -> Path:
    return Path(args.runs) / args.scale / arm.arm / f"seed{seed}"


def train_args(args, sc: dict, arm: Arm, seed: int, data: Path) -> list[str]:
    key, val = sc[f"{arm.length}_len"].split("=")
    sets = [f"data.path={data}", f"model.student={arm.model}", f"method.name={arm.method}",
            f"train.seed={seed}", f"data.seed={seed}", f"train.{key}={val}",
            f"data.batch_size={sc['batch_size']}", f"train.out_dir={run_dir(args, arm, seed)}", *arm.sets]
    if arm.recipe == "ssl_cpu":
        sets += [f"model.shuffle_bn_group={sc['shuffle_bn_group']}", f"method.queue_size={sc['queue_size']}"]
    if arm.teacher and arm.method in ("disco", "ssld"):
        t = BY_NAME[arm.teacher]
        sets += [f"model.teacher={t.model}", f"model.teacher_ckpt={teacher_ckpt(args, t)}",
                 "model.teacher_format=fastdisco"]
        if arm.method == "disco":
            sets.append("model.teacher_proj_hidden=2048")
    out = ["train", "--config", str((HERE / f"{arm.recipe}.yaml").relative_to(ROOT))]
    for s in sets:
        out += ["--set", s]
    return out


def teacher_ckpt(args, t: Arm) -> Path:
    return run_dir(args, t, args.seeds[0]) / "checkpoints" / "last.pt"


def eval_args(args, sc: dict, arm: Arm, seed: int, protocol: str, train: Path, test: Path) -> list[str]:
    rd = run_dir(args, arm, seed)
    common = ["--resolution", "32", "--backend", "ffcv", "--num-workers", "1", "--device", "cpu", "--batch-size",
              "256", "--no-progress", "--seed", str(seed)]
    if protocol == "knn":
        return ["eval", "knn", str(rd), "--train", str(train), "--val", str(test), "--k", str(sc["knn_k"]), *common]
    if protocol == "linear":
        return ["eval", "linear", str(rd), "--train", str(train), "--val", str(test), "--fast",
                "--epochs", str(sc["linear_epochs"]), *common]
    out = ["eval", "ssld", str(rd), "--val", str(test), *common]
    if arm.teacher and arm.method != "ssld":  # labels-only: agreement with the same teacher
        t = BY_NAME[arm.teacher]
        out += ["--teacher", t.model, "--teacher-ckpt", str(teacher_ckpt(args, t)), "--teacher-format", "fastdisco"]
    return out


def eval_file(rd: Path, protocol: str) -> Path:
    return rd / "eval" / ("linear_fast.json" if protocol == "linear" else f"{protocol}.json")


def throughput(rd: Path) -> dict:
    """Training images/s from metrics.jsonl: mean of the logged intervals after the first (warm-up)."""
    path = rd / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    ips = [r["images_per_s"] for r in rows[1:]] or [r["images_per_s"] for r in rows]
    return {"images_per_s": sum(ips) / len(ips) if ips else None, "steps": rows[-1]["step"] if rows else 0,
            "final_loss": rows[-1]["loss"] if rows else None}


def do_arm(args, sc: dict, arm: Arm, seed: int, data: dict, done: set) -> dict | None:
    key = (arm.experiment, arm.arm, seed)
    if key in done:
        print(f"skip {arm.arm} seed {seed}: row exists", flush=True)
        return None
    rd = run_dir(args, arm, seed)
    log = rd.parent / f"seed{seed}.log"
    targv, tcmd = fastdisco_cmd(train_args(args, sc, arm, seed, data["train"]))
    prior = json.loads((rd / "repro_train.json").read_text()) if (rd / "repro_train.json").exists() else None
    if prior is None:
        print(f"train {arm.arm} seed {seed} ...", flush=True)
        wall = run_logged(targv, log)
        prior = {"train_wall_s": round(wall, 1)}
        (rd / "repro_train.json").write_text(json.dumps(prior))
    metrics, ecmds, ewall = {}, {}, 0.0
    for protocol in [e for e in arm.evals if e in args.evals]:
        eargv, ecmd = fastdisco_cmd(eval_args(args, sc, arm, seed, protocol, data["train"], data["test"]))
        f = eval_file(rd, protocol)
        if not f.exists():
            ewall += run_logged(eargv, log)
        r = json.loads(f.read_text())
        ecmds[protocol] = ecmd
        if protocol == "ssld":
            metrics.update(top1=r["top1"], top5=r["top5"], agreement_top1=r["agreement_top1"])
        else:
            metrics[f"{protocol}_top1"] = r["top1"]
    tp = throughput(rd)
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((rd / "config.yaml").read_text())))
    imgs = tp["steps"] * cfg["data"]["batch_size"]
    row = {"experiment": arm.experiment, "arm": arm.arm, "seed": seed, "scale": args.scale, "method": arm.method,
           "student": arm.model, "teacher": BY_NAME[arm.teacher].model if arm.teacher else None,
           "proj_hidden": cfg["model"]["proj_hidden"] if arm.method in ("mocov2", "disco") else None,
           "metrics": metrics, "train_wall_s": prior["train_wall_s"], "eval_wall_s": round(ewall, 1),
           "images_per_s": tp["images_per_s"], "images_per_s_wall": imgs / prior["train_wall_s"],
           "steps": tp["steps"], "epochs_seen": imgs / data["n_train"], "final_loss": tp["final_loss"],
           "resolution": cfg["data"]["resolution"], "train_images": data["n_train"], "test_images": data["n_test"],
           "command": {"prepare": data["commands"], "train": tcmd, "eval": ecmds}, "run_dir": str(rd),
           "note": f"reduced-scale CPU run ({args.scale}): Fashion-MNIST {data['n_train']} train / "
                   f"{data['n_test']} test images, {cfg['data']['resolution']} px, {imgs / data['n_train']:.1f} epochs"}
    append_rows(args.name, [row], args.results_dir)
    print(f"row {arm.arm} seed {seed}: {metrics}  train {prior['train_wall_s']} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="cpu", choices=sorted(SCALES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=[a.arm for a in ARMS], help="only these arms (and their teachers)")
    p.add_argument("--data-dir", default="data/repro", help="prepared datasets go here")
    p.add_argument("--runs", default="runs/repro", help="run directories go under RUNS/SCALE/ARM/seedN")
    p.add_argument("--name", default="repro_fmnist", help="results file benchmarks/results/NAME.jsonl")
    p.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    p.add_argument("--evals", nargs="+", default=["knn", "linear", "ssld"], choices=["knn", "linear", "ssld"],
                   help="only these evaluations (the smoke test runs fewer)")
    p.add_argument("--inprocess", action="store_true",
                   help="run the fastdisco commands in this process (tests; the sweep uses subprocesses)")
    args = p.parse_args(argv)
    global INPROCESS
    INPROCESS = args.inprocess
    sc = SCALES[args.scale]

    dd = Path(args.data_dir)
    log = dd / "prepare.log"
    train = dd / f"fmnist_train{sc['train_limit']}"
    test = dd / f"fmnist_test{sc['test_limit']}"
    cmds = [prepare("train", sc["train_limit"], train, log), prepare("test", sc["test_limit"], test, log)]
    n = {s: json.loads((d / "manifest.json").read_text())["num_samples"] for s, d in (("train", train), ("test", test))}
    data = {"train": train, "test": test, "n_train": n["train"], "n_test": n["test"], "commands": cmds}

    wanted = set(args.arms or BY_NAME)
    for a in list(wanted):
        if BY_NAME[a].teacher:
            wanted.add(BY_NAME[a].teacher)
    done = {(r["experiment"], r["arm"], r["seed"]) for r in read_rows(args.name, args.results_dir)
            if r.get("scale") == args.scale}
    # Teachers first; then seed by seed, so an interrupted sweep still holds whole seeds.
    for arm in ARMS:
        if arm.seeds == "first" and arm.arm in wanted:
            do_arm(args, sc, arm, args.seeds[0], data, done)
    for seed in args.seeds:
        for arm in ARMS:
            if arm.seeds == "all" and arm.arm in wanted:
                do_arm(args, sc, arm, seed, data, done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
