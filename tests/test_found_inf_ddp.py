"""2-process gloo: a non-finite loss on ONE rank skips the update on EVERY rank. The loss flag is
max-reduced by the asynchronous all_reduce the Trainer issues before backward; rank 0, whose own
loss is finite, must still see the bad step (its metrics count it) and keep finite weights."""
import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from fastdisco.io import safe_torch_load

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import TinyLoader, tiny_cfg  # noqa: E402

OVER = {"model": {"student": "test_efficientnet_gn"}, "data": {"batch_size": 4},
        "train": {"max_steps": 3, "log_every": 3, "ckpt_every": 100, "nan_policy": "skip"}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from fastdisco.engine.trainer import train

    cfg = tiny_cfg(Path(out), "mocov2", **OVER)
    # rank 1's second batch is NaN; rank 0's batches are all finite
    train(cfg, loader=TinyLoader(batch_size=4, rank=rank, world_size=world, poison_batch=1 if rank == 1 else None))


def test_one_rank_nonfinite_skips_everywhere(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    (row,) = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert row["step"] == 3 and row["nonfinite_steps"] == 1  # written by rank 0, whose loss was finite
    ckpt = safe_torch_load(tmp_path / "run" / "checkpoints" / "last.pt")
    for part in ("student", "key_encoder"):
        assert all(torch.isfinite(v).all() for v in ckpt[part].values() if v.is_floating_point()), part
