"""Issues 8 and 14: a small-scale reproduction of DisCo's and SSLD's claims on Fashion-MNIST, run
through the `fastdisco` CLI (every row records the exact commands that made it).

    nice python benchmarks/repro/run_fmnist.py --scale cpu64 --seeds 0 1 2

Design (issue 14; student resnet10t, teacher resnet18; every row has `experiment`, `role`, `arm`):
  disco (SSL at the scale's ssl_res, kNN bank = the train subset, full 10k test split)
    raw_pixels / random_init   baselines: flattened pixels; random resnet10t, BN recalibrated
    mocov2_teacher      teacher: resnet18 MoCo v2, longer than the students (seed 0 only, reused)
    supervised_teacher  teacher: resnet18 trained with labels (positive control, seed 0 only)
    mocov2              student alone: MoCo v2 (head hidden 512, the paper's small-student width)
    disco_h512 / disco_h2048   DisCo from mocov2_teacher's final (head) embedding, head hidden 512 / 2048
    disco_sup           DisCo from supervised_teacher's pooled 512-d embedding (proj_dim 512, hidden 2048)
  ssld (classifiers at the scale's cls_res; L = the first 10% of the train subset, U = the rest)
    raw_pixels / random_init   baselines, probed with L's labels only
    supervised_teacher_L  teacher: resnet18 trained with labels on L (seed 0 only)
    labels_only_L       student: cross-entropy on L
    ssld_L              student: symmetric KL to the teacher on L, labels unused
    ssld_LU             student: symmetric KL on L + U (the whole train subset), labels unused
    ssld_Lmine          student: symmetric KL on L + what `fastdisco mine` selects from U with the
                        L-teacher (top-k most confident per predicted class, test near-duplicates
                        dropped), labels unused
  All students of one experiment run the same number of optimizer steps; arms with the same seed
  start from identical student weights (fastdisco.engine.trainer.build_models).
SSL arms and baselines: weighted kNN (k=20 and k=200, one feature pass) and a fast linear probe;
classifier arms: `fastdisco eval ssld` (their own top-1, stored as linear_top1). Teachers of the
disco experiment also get the collapse check of their final embedding (teacher_gate.json).

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

# Lengths per scale. "cpu64" is issue 14's design (~2-3 h on a shared 2-core CPU for 3 seeds);
# "cpu" was issue 8's (32 px, a MoCo teacher that fails the gate); "tiny" is the smoke test's.
SCALES: dict[str, dict] = {
    "tiny": {"train_limit": 64, "test_limit": 32, "L_limit": 32, "ssl_res": 32, "cls_res": 32,
             "len": {"teacher": "max_steps=3", "sup_teacher": "max_steps=3", "L_teacher": "max_steps=3",
                     "student": "max_steps=2", "cls_student": "max_steps=2"},
             "batch_size": 16, "shuffle_bn_group": 8, "queue_size": 64, "linear_epochs": 5, "knn_k": [10, 20],
             "mine_top_k": 2},
    "cpu": {"train_limit": 10000, "test_limit": 2000, "L_limit": 1000, "ssl_res": 32, "cls_res": 32,
            "len": {"teacher": "epochs=4", "sup_teacher": "epochs=4", "L_teacher": "epochs=30",
                    "student": "epochs=2", "cls_student": "max_steps=312"},
            "batch_size": 64, "shuffle_bn_group": 16, "queue_size": 4096, "linear_epochs": 100, "knn_k": [200, 20],
            "mine_top_k": 450},
    "cpu64": {"train_limit": 10000, "test_limit": 10000, "L_limit": 1000, "ssl_res": 64, "cls_res": 32,
              "len": {"teacher": "epochs=10", "sup_teacher": "epochs=4", "L_teacher": "epochs=30",
                      "student": "epochs=2", "cls_student": "max_steps=600"},
              # queue 512: with 10k images a longer queue is mostly stale keys at these lengths
              "batch_size": 64, "shuffle_bn_group": 16, "queue_size": 512, "linear_epochs": 100, "knn_k": [200, 20],
              "mine_top_k": 450},  # ~half of U's ~900 images per class
    "gpu": {"train_limit": 60000, "test_limit": 10000, "L_limit": 6000, "ssl_res": 64, "cls_res": 32,
            "len": {"teacher": "epochs=100", "sup_teacher": "epochs=20", "L_teacher": "epochs=100",
                    "student": "epochs=30", "cls_student": "epochs=30"},
            "batch_size": 256, "shuffle_bn_group": 32, "queue_size": 16384, "linear_epochs": 100, "knn_k": [200, 20],
            "mine_top_k": 2700},
}


@dataclass
class Arm:
    experiment: str                  # "disco" | "ssld"
    arm: str
    role: str                        # raw_pixels | random_init | teacher | student_alone | student_distilled
    recipe: str                      # benchmarks/repro/<recipe>.yaml ("" = no training: a baseline)
    method: str
    model: str
    length: str                      # key of the scale's "len"
    sets: list[str] = field(default_factory=list)
    teacher: str | None = None       # arm name of the teacher run this one needs
    evals: tuple[str, ...] = ("knn", "linear")
    seeds: str = "all"               # "all" | "first"
    res: str = "ssl"                 # "ssl" | "cls": which scale resolution
    data: str = "train"              # "train" | "L" | "Lmine": train subset it trains on / probes with


ARMS = [
    # baselines first (no training)
    Arm("disco", "raw_pixels", "raw_pixels", "", "none", "raw_pixels", "", seeds="first"),
    Arm("disco", "random_init", "random_init", "", "none", STUDENT, "", seeds="first"),
    Arm("ssld", "raw_pixels_L", "raw_pixels", "", "none", "raw_pixels", "", seeds="first", res="cls", data="L"),
    Arm("ssld", "random_init_L", "random_init", "", "none", STUDENT, "", seeds="first", res="cls", data="L"),
    # teachers (seed 0, reused)
    Arm("disco", "mocov2_teacher", "teacher", "ssl_cpu", "mocov2", TEACHER, "teacher", ["model.proj_hidden=2048"],
        seeds="first"),
    Arm("ssld", "supervised_teacher_L", "teacher", "cls_cpu", "supervised", TEACHER, "L_teacher", evals=("ssld",),
        seeds="first", res="cls", data="L"),
    Arm("disco", "supervised_teacher", "teacher", "cls_cpu", "supervised", TEACHER, "sup_teacher", seeds="first"),
    # students, most informative first (an interrupted sweep still answers the main claims):
    # MoCo alone, faithful DisCo (head 2048), the positive control, SSLD, then DisCo head 512
    Arm("disco", "mocov2", "student_alone", "ssl_cpu", "mocov2", STUDENT, "student", ["model.proj_hidden=512"]),
    Arm("disco", "disco_h2048", "student_distilled", "ssl_cpu", "disco", STUDENT, "student",
        ["model.proj_hidden=2048"], teacher="mocov2_teacher"),
    Arm("disco", "disco_sup", "student_distilled", "ssl_cpu", "disco", STUDENT, "student",
        ["model.proj_hidden=2048", "model.proj_dim=512"], teacher="supervised_teacher"),
    Arm("ssld", "labels_only_L", "student_alone", "cls_cpu", "supervised", STUDENT, "cls_student",
        teacher="supervised_teacher_L", evals=("ssld",), res="cls", data="L"),
    Arm("ssld", "ssld_L", "student_distilled", "cls_cpu", "ssld", STUDENT, "cls_student",
        teacher="supervised_teacher_L", evals=("ssld",), res="cls", data="L"),
    Arm("ssld", "ssld_LU", "student_distilled", "cls_cpu", "ssld", STUDENT, "cls_student",
        teacher="supervised_teacher_L", evals=("ssld",), res="cls", data="train"),
    Arm("disco", "disco_h512", "student_distilled", "ssl_cpu", "disco", STUDENT, "student",
        ["model.proj_hidden=512"], teacher="mocov2_teacher"),
    Arm("ssld", "ssld_Lmine", "student_distilled", "cls_cpu", "ssld", STUDENT, "cls_student",
        teacher="supervised_teacher_L", evals=("ssld",), res="cls", data="Lmine"),
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


def mined_set(args, sc: dict, data: dict) -> None:
    """L + what `fastdisco mine` selects from U, as one prepared dataset (data["Lmine"]; built once).

    mine scores the whole train subset with the L-teacher and keeps the top-k per predicted class
    after dropping near-duplicates of the test split; the picks that fall in L (pool index < n_L)
    are dropped, so the added images come from U only. L itself is exported by a second mine run
    that keeps every image (no eval set, top-k = |L|); labels in the list are the teacher's
    predictions, which SSLD never reads."""
    dd = Path(args.data_dir)
    out = dd / f"fmnist_Lmine_top{sc['mine_top_k']}"
    t = BY_NAME["supervised_teacher_L"]
    common = ["--teacher", t.model, "--teacher-ckpt", str(teacher_ckpt(args, t)), "--teacher-format", "fastdisco",
              "--resolution", str(sc["cls_res"]), "--device", "cpu", "--workers", "1", "--no-progress"]
    pool_out, l_out = dd / f"mine_U_top{sc['mine_top_k']}", dd / "mine_L_all"
    cmds = []
    for argv_tail, dest in (([str(data["train"]), str(pool_out), "--top-k", str(sc["mine_top_k"]),
                              "--eval-set", str(data["test"])], pool_out),
                            ([str(data["L"]), str(l_out), "--top-k", str(data["n_L"])], l_out)):
        argv, cmd = fastdisco_cmd(["mine", *argv_tail, *common])
        cmds.append(cmd)
        if not (dest / "mine.json").is_file():
            run_logged(argv, dd / "mine.log")
    if not (out / "manifest.json").is_file():
        lines = [f"{l_out.name}/{x}" for x in (l_out / "filelist.txt").read_text().splitlines() if x]
        picked = (pool_out / "selected.csv").read_text().splitlines()[1:]
        lines += [f"{pool_out.name}/{path},{label}" for idx, label, _conf, path in (x.split(",") for x in picked)
                  if int(idx) >= data["n_L"]]
        lst = dd / f"Lmine_top{sc['mine_top_k']}.txt"
        lst.write_text("\n".join(lines) + "\n")
        argv, cmd = fastdisco_cmd(["prepare-data", str(lst), str(out), "--no-progress"])
        run_logged(argv, dd / "prepare.log")
    cmds.append(shlex.join(["fastdisco", "prepare-data", f"{dd}/Lmine_top{sc['mine_top_k']}.txt", str(out)]))
    info = json.loads((pool_out / "mine.json").read_text())
    data.update(Lmine=out, n_Lmine=json.loads((out / "manifest.json").read_text())["num_samples"],
                mine_commands=cmds, mine_info={k: info[k] for k in ("num_pool", "num_selected", "num_near_duplicates",
                                                       "num_eval_images", "selected_per_class")})


def run_dir(args, arm: Arm, seed: int) -> Path:
    return Path(args.runs) / args.scale / arm.arm / f"seed{seed}"


def res_of(sc: dict, arm: Arm) -> int:
    return sc[f"{arm.res}_res"]


def train_args(args, sc: dict, arm: Arm, seed: int, data: dict) -> list[str]:
    key, val = sc["len"][arm.length].split("=")
    path = data[arm.data]
    sets = [f"data.path={path}", f"model.student={arm.model}", f"method.name={arm.method}",
            f"train.seed={seed}", f"data.seed={seed}", f"train.{key}={val}",
            f"data.batch_size={sc['batch_size']}", f"train.out_dir={run_dir(args, arm, seed)}", *arm.sets]
    if res_of(sc, arm) != 32:
        sets.append(f"data.resolution={res_of(sc, arm)}")
    if arm.recipe == "ssl_cpu":
        sets += [f"model.shuffle_bn_group={sc['shuffle_bn_group']}", f"method.queue_size={sc['queue_size']}"]
    if arm.teacher and arm.method in ("disco", "ssld"):
        t = BY_NAME[arm.teacher]
        sets += [f"model.teacher={t.model}", f"model.teacher_ckpt={teacher_ckpt(args, t)}",
                 "model.teacher_format=fastdisco"]
        if arm.method == "disco":  # MoCo teacher: its 2048-2048-128 head; supervised: pooled features
            sets.append(f"model.teacher_proj_hidden={2048 if t.method == 'mocov2' else 0}")
    out = ["train", "--config", str((HERE / f"{arm.recipe}.yaml").relative_to(ROOT))]
    for s in sets:
        out += ["--set", s]
    return out


def teacher_ckpt(args, t: Arm) -> Path:
    return run_dir(args, t, args.seeds[0]) / "checkpoints" / "last.pt"


def eval_args(args, sc: dict, arm: Arm, seed: int, protocol: str, data: dict) -> list[str]:
    rd = run_dir(args, arm, seed)
    train = data[arm.data]
    common = ["--resolution", str(res_of(sc, arm)), "--backend", "ffcv", "--num-workers", "1", "--device", "cpu",
              "--batch-size", "256", "--no-progress", "--seed", str(seed)]
    if arm.role == "raw_pixels":
        common += ["--format", "raw_pixels"]
    elif arm.role == "random_init":
        common += ["--format", "random_init", "--model", arm.model]
    if protocol == "knn":
        return ["eval", "knn", str(rd), "--train", str(train), "--val", str(data["test"]),
                "--k", *map(str, sc["knn_k"]), *common]
    if protocol == "linear":
        return ["eval", "linear", str(rd), "--train", str(train), "--val", str(data["test"]), "--fast",
                "--epochs", str(sc["linear_epochs"]), *common]
    out = ["eval", "ssld", str(rd), "--val", str(data["test"]), *common]
    if arm.teacher and arm.method != "ssld":  # labels-only: agreement with the same teacher
        t = BY_NAME[arm.teacher]
        out += ["--teacher", t.model, "--teacher-ckpt", str(teacher_ckpt(args, t)), "--teacher-format", "fastdisco"]
    return out


def eval_file(rd: Path, protocol: str) -> Path:
    return rd / "eval" / ("linear_fast.json" if protocol == "linear" else f"{protocol}.json")


def teacher_gate(args, sc: dict, arm: Arm, data: dict) -> dict:
    """Collapse check of a teacher's FINAL embedding (what DisCo distills: the projection head's
    output for a MoCo teacher, the pooled features for a classifier) on the test images: mean cosine
    between different images, BN in eval mode. Cached in RUN/eval/teacher_gate.json."""
    rd = run_dir(args, arm, args.seeds[0])
    out = rd / "eval" / "teacher_gate.json"
    if out.exists():
        return json.loads(out.read_text())
    import torch

    from fastdisco.config import DataConfig, ModelConfig
    from fastdisco.loader import make_loader
    from fastdisco.evaluation.baselines import mean_pairwise_cosine
    from fastdisco.evaluation.features import extract_features
    from fastdisco.models.teacher import load_teacher

    torch.set_num_threads(2)
    t = load_teacher(ModelConfig(teacher=arm.model, teacher_ckpt=str(rd / "checkpoints" / "last.pt"),
                                 teacher_format="fastdisco", teacher_bn="eval", teacher_proj_hidden=0))
    loader = make_loader(DataConfig(path=str(data["test"]), backend="ffcv", recipe="eval",
                                    resolution=res_of(sc, arm), batch_size=256, num_workers=1, drop_last=False),
                         device=torch.device("cpu"), dtype=torch.float32, rank=0, world_size=1)
    feats, labels = extract_features(t, loader, device="cpu", fn=t)
    r = {"final_embedding_dim": int(feats.shape[1]), "final_embedding_mean_cosine": mean_pairwise_cosine(feats),
         "test_images": int(feats.shape[0])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1))
    return r


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
    if arm.data == "Lmine" and "Lmine" not in data:
        mined_set(args, sc, data)
    rd = run_dir(args, arm, seed)
    rd.mkdir(parents=True, exist_ok=True)
    log = rd.parent / f"seed{seed}.log"
    tcmd, prior = None, {"train_wall_s": 0.0}
    if arm.recipe:
        targv, tcmd = fastdisco_cmd(train_args(args, sc, arm, seed, data))
        prior = json.loads((rd / "repro_train.json").read_text()) if (rd / "repro_train.json").exists() else None
        if prior is None:
            print(f"train {arm.arm} seed {seed} ...", flush=True)
            wall = run_logged(targv, log)
            prior = {"train_wall_s": round(wall, 1)}
            (rd / "repro_train.json").write_text(json.dumps(prior))
    metrics, ecmds, ewall = {}, {}, 0.0
    for protocol in [e for e in arm.evals if e in args.evals]:
        eargv, ecmd = fastdisco_cmd(eval_args(args, sc, arm, seed, protocol, data))
        f = eval_file(rd, protocol)
        if not f.exists():
            ewall += run_logged(eargv, log)
        r = json.loads(f.read_text())
        ecmds[protocol] = ecmd
        if protocol == "ssld":  # a classifier: its own top-1 is the linear number
            metrics.update(linear_top1=r["top1"], top1=r["top1"], top5=r["top5"],
                           agreement_top1=r["agreement_top1"])
        elif protocol == "knn":
            metrics["knn_top1"] = r["top1"]
            for k, v in (r.get("by_k") or {}).items():
                metrics[f"knn_top1_k{k}"] = v["top1"]
            metrics["val_mean_cosine"] = r.get("val_mean_cosine")
        else:
            metrics[f"{protocol}_top1"] = r["top1"]
    if arm.role == "teacher" and arm.experiment == "disco" and "knn" in args.evals:
        metrics.update(teacher_gate(args, sc, arm, data))
    tp = throughput(rd)
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((rd / "config.yaml").read_text()))) \
        if (rd / "config.yaml").exists() else {}
    n_train = data[f"n_{arm.data}"]
    imgs = tp["steps"] * cfg.get("data", {}).get("batch_size", 0)
    row = {"experiment": arm.experiment, "role": arm.role, "arm": arm.arm, "seed": seed, "scale": args.scale,
           "method": arm.method, "student": arm.model,
           "teacher": BY_NAME[arm.teacher].model if arm.teacher else None, "teacher_arm": arm.teacher,
           "proj_hidden": cfg["model"]["proj_hidden"] if arm.method in ("mocov2", "disco") else None,
           "proj_dim": cfg["model"]["proj_dim"] if arm.method in ("mocov2", "disco") else None,
           "metrics": metrics, "train_wall_s": prior["train_wall_s"], "eval_wall_s": round(ewall, 1),
           "images_per_s": tp["images_per_s"],
           "images_per_s_wall": imgs / prior["train_wall_s"] if prior["train_wall_s"] else None,
           "steps": tp["steps"], "epochs_seen": imgs / n_train, "final_loss": tp["final_loss"],
           "resolution": res_of(sc, arm), "train_images": n_train, "test_images": data["n_test"],
           "command": {"prepare": data["commands"] + (data["mine_commands"] if arm.data == "Lmine" else []),
                       "train": tcmd, "eval": ecmds}, "run_dir": str(rd),
           **({"mine": data["mine_info"]} if arm.data == "Lmine" else {}),
           "note": f"reduced-scale CPU run ({args.scale}): Fashion-MNIST {n_train} train / "
                   f"{data['n_test']} test images, {res_of(sc, arm)} px, {imgs / n_train:.1f} epochs"}
    append_rows(args.name, [row], args.results_dir)
    print(f"row {arm.arm} seed {seed}: {metrics}  train {prior['train_wall_s']} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="cpu64", choices=sorted(SCALES))
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
    lab = dd / f"fmnist_train{sc['L_limit']}"  # L: the first L_limit of the same train order
    cmds = [prepare("train", sc["train_limit"], train, log), prepare("test", sc["test_limit"], test, log),
            prepare("train", sc["L_limit"], lab, log)]
    n = {s: json.loads((d / "manifest.json").read_text())["num_samples"]
         for s, d in (("train", train), ("test", test), ("L", lab))}
    data = {"train": train, "test": test, "L": lab, "n_train": n["train"], "n_test": n["test"], "n_L": n["L"],
            "commands": cmds}

    wanted = set(args.arms or BY_NAME)
    for a in list(wanted):
        if BY_NAME[a].teacher:
            wanted.add(BY_NAME[a].teacher)
    done = {(r["experiment"], r["arm"], r["seed"]) for r in read_rows(args.name, args.results_dir)
            if r.get("scale") == args.scale}
    # Baselines and teachers first; then seed by seed, so an interrupted sweep still holds whole seeds.
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
