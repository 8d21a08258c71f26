"""examples/slurm: the scripts of docs/slurm.md, run here under stand-ins for the SLURM commands.

`srun` runs its command in place (one node), `scontrol` names the node and records requeues,
`squeue` reports the time left, `sbatch` runs a script (each array index in turn) at once.
What is checked is the wiring that a real cluster would exercise:
  * prepare_data.sh: an array of --part jobs plus the dependent --merge gives the same prepared
    dataset as one plain run;
  * train.sbatch: a 2-process gloo torchrun launch; SIGTERM to every process of the job step
    (what `#SBATCH --signal=TERM@120` does) makes fastdisco save and stop, the script requeues the
    job, and the next attempt (the same command) resumes from that checkpoint and finishes.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SLURM = ROOT / "examples" / "slurm"

SHIMS = {
    "srun": '#!/bin/sh\nexec "$@"\n',
    "scontrol": '#!/bin/sh\ncase "$1" in\n  show) echo localhost ;;\n'
                '  requeue) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;\nesac\n',
    "squeue": '#!/bin/sh\necho "${FAKE_TIME_LEFT:-1-00:00:00}"\n',
    # sbatch [--parsable] [--array=A-B] [--dependency=...] SCRIPT ARGS: runs SCRIPT now
    "sbatch": r'''#!/usr/bin/env bash
set -e
array= ; dep=
while [[ $1 == --* ]]; do
  case "$1" in --array=*) array=${1#--array=} ;; --dependency=*) dep=${1#--dependency=} ;; esac
  shift
done
n=0; [ -f "$FAKE_SLURM_LOG" ] && n=$(wc -l < "$FAKE_SLURM_LOG")
id=$((1000 + n))
echo "sbatch $id array=$array dependency=$dep $*" >> "$FAKE_SLURM_LOG"
if [ -n "$array" ]; then
  for ((i = ${array%-*}; i <= ${array#*-}; i++)); do
    SLURM_JOB_ID=$id SLURM_ARRAY_TASK_ID=$i bash "$@" > /dev/null
  done
else
  SLURM_JOB_ID=$id bash "$@" > /dev/null
fi
echo "$id"
''',
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slurm_env(tmp_path):
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, text in SHIMS.items():
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{shims}:{bindir}:{os.environ['PATH']}",
           "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"), "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "localhost", "OMP_NUM_THREADS": "1"}
    return env, tmp_path / "slurm.log"


def _prepare(out: Path, *extra: str, env=None) -> None:
    subprocess.run([sys.executable, "-m", "fastdisco", "prepare-data", "--dataset", "synthetic", "--num-classes", "3",
                    "--per-class", "20", "--image-size", "32", "--format", "dali", "--shard-size", "10",
                    "--workers", "1", "--no-progress", *extra, str(out)], check=True, env=env, cwd=ROOT,
                   capture_output=True)


def test_prepare_array_then_merge_equals_one_run(tmp_path, slurm_env):
    env, log = slurm_env
    opts = ["--dataset", "synthetic", "--num-classes", "3", "--per-class", "20", "--image-size", "32",
            "--format", "dali", "--shard-size", "10"]
    out = tmp_path / "parts"
    res = subprocess.run(["bash", str(SLURM / "prepare_data.sh"), *opts, str(out)], env={**env, "N": "3"},
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = log.read_text().splitlines()
    assert "array=0-2" in lines[0] and "dependency=afterok:1000" in lines[1], lines
    single = tmp_path / "single"
    _prepare(single, env=env)
    a, b = json.loads((out / "manifest.json").read_text()), json.loads((single / "manifest.json").read_text())
    assert a["num_samples"] == b["num_samples"] == 60 and a["shards"] == b["shards"]
    for shard in a["shards"]:  # the same bytes, sample for sample
        assert (out / shard["tar"]).read_bytes() == (single / shard["tar"]).read_bytes()


def test_train_script_usage():
    res = subprocess.run(["bash", str(SLURM / "train.sbatch")], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr


def _descendants(pid: int) -> list[int]:
    """pid's child processes, recursively (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _job_step(script_pid: int) -> list[int]:
    """The processes `srun` started (here: torchrun and its ranks), not the batch shell or tee."""
    procs = []
    for pid in _descendants(script_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not cmd[0].endswith(b"tee") and any(b"torch.distributed.run" in c or b"fastdisco" in c for c in cmd):
            procs.append(pid)
    return procs


@pytest.mark.slow
def test_train_sbatch_sigterm_requeue_resume(tmp_path, slurm_env):
    env, log = slurm_env
    data = tmp_path / "data"
    _prepare(data, env=env)
    run = tmp_path / "run"
    sets = ["data.path=" + str(data), "data.batch_size=8", "data.resolution=32",
            "data.num_workers=1",  # workers get the SIGTERM too (docs/slurm.md): they must not kill the save
            "model.student=resnet10t", "model.proj_hidden=128", "model.shuffle_bn_group=4",
            "method.queue_size=256", "optim.base_batch=16", "train.device=cpu", "train.dist_backend=gloo",
            "train.max_steps=40", "train.log_every=5", "train.ckpt_every=1000", "train.tensorboard=false",
            "train.progress=false"]
    cmd = ["bash", str(SLURM / "train.sbatch"), str(ROOT / "configs/demo_cpu_teacher.yaml"), str(run)]
    for s in sets:
        cmd += ["--set", s]
    env = {**env, "GPUS_PER_NODE": "2", "MASTER_PORT": str(_free_port()), "SHUTDOWN_TIMEOUT": "60",
           "TORCHRUN": f"{sys.executable} -m torch.distributed.run"}

    # attempt 0: SIGTERM to the job step once training is under way
    job = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 150
    try:
        while not (metrics.exists() and metrics.read_text().strip()):
            assert job.poll() is None, job.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "no training step logged in time"
            time.sleep(0.2)
        step = _job_step(job.pid)
        assert step, "torchrun not found among the batch script's processes"
        for pid in step:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        out, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = out.decode()
    assert job.returncode == 0, text[-3000:]
    assert "signal received, saved" in text and "requeueing job 4242" in text, text[-3000:]
    assert log.read_text().splitlines() == ["requeue 4242"]
    saved = [json.loads(line)["step"] for line in metrics.read_text().splitlines()][-1]
    assert 0 < saved < 40 and saved % 5 == 0  # stopped at a logging step (all ranks agree there)
    assert (run / "checkpoints" / f"step_{saved:08d}.pt").is_file()

    # attempt 1: the same command resumes from that checkpoint and finishes; no further requeue
    res = subprocess.run(cmd, env={**env, "SLURM_RESTART_COUNT": "1"}, cwd=ROOT, capture_output=True,
                         text=True, timeout=150)
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"resuming {run} at step {saved}/40" in res.stdout and "done, step 40/40" in res.stdout
    assert "run complete" in res.stdout and log.read_text().splitlines() == ["requeue 4242"]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(5, 41, 5))
    assert sorted(p.name for p in (run / "slurm").iterdir()) == ["train-4242-0.log", "train-4242-1.log"]
