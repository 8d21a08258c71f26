"""2-process gloo DDP == 1 process with the same global batch.

BatchNorm statistics depend on the per-process batch, so this equivalence only holds without
batch-dependent layers: the student is timm's `test_efficientnet_gn` (GroupNorm). What is checked:
gradient averaging across ranks, the key all-gather feeding one identical queue on every rank,
the per-rank loader split, the schedule and the checkpoint written by rank 0."""
import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from fastdisco.io import safe_torch_load

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import TinyLoader, tiny_cfg  # noqa: E402

OVER = {"model": {"student": "test_efficientnet_gn"}, "train": {"max_steps": 4, "log_every": 2, "ckpt_every": 100}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from fastdisco.engine.trainer import train

    cfg = tiny_cfg(Path(out), "mocov2", data={"batch_size": 4}, **OVER)
    train(cfg, loader=TinyLoader(batch_size=4, rank=rank, world_size=world))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_single_process(tmp_path):
    from fastdisco.engine.trainer import train

    single = tiny_cfg(tmp_path / "single", "mocov2", **OVER)  # batch 8 in one process
    train(single, loader=TinyLoader(batch_size=8))
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True,
                       start_method="spawn")
    a = safe_torch_load(Path(single.train.out_dir) / "checkpoints/last.pt")
    b = safe_torch_load(tmp_path / "ddp/run/checkpoints/last.pt")
    assert b["config"]["data"]["batch_size"] == 4 and b["step"] == 4
    for part in ("student", "key_encoder", "queue"):
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=1e-4, atol=1e-5, msg=f"{part}.{k}")
    assert len(b["rng"]) == 2  # one RNG state per rank
