"""Exact resume with the parts users run: a prepared dataset, the real loader built from the
config (torch with DataLoader workers, DALI on the CPU, ffcv), `fastdisco.engine.trainer.train`,
shuffle-BN (2 groups) and grad accumulation. A run stopped with a checkpoint (`train.stop_at`)
in the middle of an epoch or at an epoch boundary, then re-run with the same config, must end
with the same checkpoint, tensor for tensor and bit for bit, as an uninterrupted run.

Every consumer of randomness has its own generator (docs/design.md section 4): the augmentation
draws from (seed, epoch, rank, batch), ffcv's crop boxes from the same shared sampler, the
shuffle-BN permutation from the method's own generator (its state in the checkpoint), the
DataLoader's worker seeds from the loader's own generator. A draw from the global RNG that a
resumed run makes at another moment than an uninterrupted one (as `iter(DataLoader)` did, which
shifted the shuffle-BN permutations) makes these tests fail; the global RNG states are compared too.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastdisco.engine.trainer import train
from fastdisco.io import safe_torch_load

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import have_backend as _have, tiny_cfg  # noqa: E402

# 64 samples / batch 8 = 8 batches per epoch; grad_accum 2 -> 4 steps per epoch; 6 steps in all
STEPS, STEPS_PER_EPOCH = 6, 4
STOPS = {"mid_epoch": 1, "epoch_boundary": STEPS_PER_EPOCH}  # step 1 ends after batch 2 of epoch 0

BACKENDS = {
    "torch_workers": {"backend": "torch", "num_workers": 2},
    "torch_main": {"backend": "torch", "num_workers": 0},
    "dali_cpu": {"backend": "dali", "decode_device": "cpu", "num_workers": 2},
    "ffcv": {"backend": "ffcv", "num_workers": 2},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder

    root = tmp_path_factory.mktemp("resume_data")
    src = write_synthetic_folder(root / "src", num_classes=4, per_class=16, size=32)
    prepare_dataset(src, root / "data", workers=1)  # both formats: webdataset shards + data.beton
    return str(root / "data")


def _cfg(run_dir: Path, data: str, loader: dict, **train_over):
    return tiny_cfg(run_dir, "mocov2",
                    data={"path": data, "seed": 5, "drop_last": True, **loader},
                    model={"shuffle_bn_group": 4},       # batch 8: 2 groups of 4
                    optim={"grad_accum": 2},
                    method={"queue_size": 32},
                    train={"max_steps": STEPS, "log_every": 1, "ckpt_every": 100, "seed": 11, **train_over})


def _final(cfg) -> dict:
    return safe_torch_load(Path(cfg.train.out_dir) / "checkpoints" / "last.pt")


def assert_same(a, b, where: str = "") -> None:
    """Every tensor equal bit for bit (and every other value equal), recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max().item()}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


_REFERENCE: dict[str, dict] = {}


def _reference(name: str, data: str, tmp_path_factory) -> dict:
    """The uninterrupted run of a backend, shared by its stop cases."""
    if name not in _REFERENCE:
        cfg = _cfg(tmp_path_factory.mktemp(f"ref_{name}"), data, BACKENDS[name])
        assert train(cfg)["step"] == STEPS
        _REFERENCE[name] = _final(cfg)
    return _REFERENCE[name]


@pytest.mark.parametrize("stop", list(STOPS))
@pytest.mark.parametrize("name", list(BACKENDS))
def test_stop_and_rerun_equals_uninterrupted_run(data, tmp_path, tmp_path_factory, name, stop):
    loader = BACKENDS[name]
    if not _have(loader["backend"]):
        pytest.skip(f"{loader['backend']} not installed")
    ref = _reference(name, data, tmp_path_factory)

    at = STOPS[stop]
    first = train(_cfg(tmp_path, data, loader, stop_at=at))
    assert first["step"] == at
    stopped = safe_torch_load(first["last_checkpoint"])
    pos = stopped["loader"]  # {"epoch": 0, "batch": 8} and {"epoch": 1, "batch": 0} are the same place
    assert pos["epoch"] * 8 + pos["batch"] == at * 2 and (stop == "mid_epoch") == (0 < pos["batch"] < 8)

    cfg = _cfg(tmp_path, data, loader)  # the same command without the stop: resumes
    assert train(cfg)["step"] == STEPS
    got = _final(cfg)

    for part in ("student", "key_encoder", "queue", "optimizer", "loader", "step", "epoch", "rng"):
        assert_same(ref[part], got[part], part)
