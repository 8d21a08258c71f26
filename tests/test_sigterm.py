"""Preemption: SLURM and torchrun send SIGTERM to every process of the job, DataLoader workers
included. The run must still save its checkpoint and exit cleanly (re-running resumes)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastdisco.cli.main import main as cli_main


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_saves_a_checkpoint(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli_main(["prepare-data", "--dataset", "synthetic", "--num-classes", "4", "--per-class", "16",
                     "--image-size", "32", "--format", "dali", "--workers", "1", "--no-progress", str(data)]) == 0
    sets = [f"data.path={data}", "data.backend=torch", "data.num_workers=1", "data.batch_size=16",
            "data.resolution=32", "model.student=test_resnet", "model.proj_hidden=32", "model.shuffle_bn_group=0",
            "method.name=mocov2", "method.queue_size=64", "train.device=cpu", "train.precision=fp32",
            "train.compile=false", "train.channels_last=false", "train.tensorboard=false", "train.progress=false",
            "train.max_steps=100000", "train.log_every=1", "train.ckpt_every=100000", f"train.out_dir={run}"]
    argv = [sys.executable, "-m", "fastdisco", "train"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a SLURM job step
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (run / "metrics.jsonl").exists(), "training never logged a step"
        os.killpg(proc.pid, signal.SIGTERM)  # the main process AND its DataLoader worker
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "signal received, saved" in out, out[-3000:]
    assert (run / "checkpoints" / "last.pt").is_file()
