"""loader.prefetch.Prefetched: the same batches in the same order as the loader it wraps, a
position that is the caller's (not the read-ahead's), and exact stop / resume with the real
torch backend (DataLoader workers) and the trainer. On the CPU the read-ahead is forced
(read_ahead=True, no streams) so the bookkeeping is the one CUDA runs; the streams: gpu tests."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import fastdisco._compat  # noqa: F401
from fastdisco.config import DataConfig
from fastdisco.loader import make_loader
from fastdisco.loader.prefetch import Prefetched

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import _cfg, _final, assert_same, data  # noqa: E402,F401
from test_resume import BACKENDS as RESUME_BACKENDS, STEPS, STOPS  # noqa: E402

N, B, RES = 48, 8, 16


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder

    root = tmp_path_factory.mktemp("prefetch")
    write_synthetic_folder(root / "src", num_classes=3, per_class=16, size=(40, 48), ext="jpg")
    prepare_dataset(root / "src", root / "out", formats="dali", workers=1, shard_size=20)
    return str(root / "out")


def _cfg_data(path, **kw):
    return DataConfig(**{**dict(path=path, backend="torch", batch_size=B, resolution=RES, num_workers=1, seed=2), **kw})


def _same(a, b):
    assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels) and torch.equal(a.valid, b.valid)
    assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))


def _snap(batch):  # the views of a batch the loader may reuse: copy what is compared later
    return type(batch)([v.clone() for v in batch.views], batch.labels.clone(), batch.indices.clone(),
                       batch.params, batch.valid.clone())


def test_cpu_default_is_a_pass_through(prepared):
    ld = make_loader(_cfg_data(prepared))
    assert not isinstance(ld, Prefetched)  # make_loader wraps on CUDA only
    p = Prefetched(ld, depth=2)
    assert not p.read_ahead and len(p) == len(ld) and p.num_views == ld.num_views


@pytest.mark.parametrize("depth", [1, 3])
def test_same_batches_same_order_and_the_callers_position(prepared, depth):
    plain = make_loader(_cfg_data(prepared))
    want, want_pos = [], []
    for e in range(2):
        plain.set_epoch(e)
        for b in plain:
            want.append(_snap(b))
            want_pos.append(plain.state_dict())
    pre = Prefetched(make_loader(_cfg_data(prepared)), depth=depth, read_ahead=True)
    got, got_pos = [], []
    for e in range(2):
        pre.set_epoch(e)
        for b in pre:
            got.append(_snap(b))
            got_pos.append(pre.state_dict())
            if len(got) % len(pre) != 0:  # the wrapped loader really is ahead of the caller
                assert pre.loader.state_dict() != got_pos[-1]
    assert len(got) == len(want) == 2 * len(plain)
    for a, b in zip(got, want):
        _same(a, b)
    assert got_pos == [{"epoch": p["epoch"], "batch": p["batch"]} for p in want_pos]
    assert pre.state_dict() == plain.state_dict() == {"epoch": 2, "batch": 0}


def test_a_pass_left_early_resumes_exactly(prepared):
    plain = [_snap(b) for b in make_loader(_cfg_data(prepared))]
    pre = Prefetched(make_loader(_cfg_data(prepared)), depth=2, read_ahead=True)
    first = []
    for b in pre:
        first.append(_snap(b))
        if len(first) == 2:
            break
    saved = pre.state_dict()
    assert saved == {"epoch": 0, "batch": 2} and pre.loader.state_dict() == saved  # loader put back
    rest = [_snap(b) for b in pre]  # the same wrapper, again
    fresh = Prefetched(make_loader(_cfg_data(prepared)), depth=2, read_ahead=True)
    fresh.load_state_dict(saved)
    rest2 = [_snap(b) for b in fresh]  # a new process resuming from the checkpointed position
    assert len(first) + len(rest) == len(plain) == len(first) + len(rest2)
    for a, b in zip(first + rest, plain):
        _same(a, b)
    for a, b in zip(rest2, plain[2:]):
        _same(a, b)


@pytest.mark.parametrize("stop", list(STOPS))
def test_trainer_stop_and_rerun_with_prefetch_equals_uninterrupted_run(data, tmp_path, tmp_path_factory, stop):  # noqa: F811
    """tests/test_resume.py's check (torch with DataLoader workers, shuffle-BN, grad accumulation)
    with the loader read ahead by 2 batches: the checkpoint holds the caller's position."""
    from fastdisco.engine.trainer import train
    from fastdisco.io import safe_torch_load

    name = "torch_workers"
    # the uninterrupted run without prefetch, made here (not test_resume's cached one: other tests
    # in between may leave process-wide state, such as the CPU kernel choice, set otherwise)
    ref_cfg = _cfg(tmp_path_factory.mktemp("prefetch_ref"), data, RESUME_BACKENDS[name])
    assert train(ref_cfg)["step"] == STEPS
    ref = _final(ref_cfg)

    def wrapped(cfg):
        return Prefetched(make_loader(cfg.data), depth=2, read_ahead=True)

    cfg = _cfg(tmp_path, data, RESUME_BACKENDS[name], stop_at=STOPS[stop])
    with wrapped(cfg) as ld:
        first = train(cfg, loader=ld)
    assert first["step"] == STOPS[stop]
    pos = safe_torch_load(first["last_checkpoint"])["loader"]  # the caller's, not 2 batches further
    assert pos["epoch"] * 8 + pos["batch"] == STOPS[stop] * 2
    cfg = _cfg(tmp_path, data, RESUME_BACKENDS[name])
    with wrapped(cfg) as ld:
        assert train(cfg, loader=ld)["step"] == STEPS
    got = _final(cfg)
    for part in ("student", "key_encoder", "queue", "optimizer", "loader", "step", "epoch", "rng"):
        assert_same(ref[part], got[part], part)


@pytest.mark.gpu
def test_cuda_prefetch_on_a_side_stream_gives_the_plain_batches(prepared):
    ld = make_loader(_cfg_data(prepared), device="cuda")
    assert isinstance(ld, Prefetched) and ld.streams
    plain = make_loader(_cfg_data(prepared, prefetch=0), device="cuda")
    assert not isinstance(plain, Prefetched)
    got = [_snap(b) for b in ld]
    want = [_snap(b) for b in plain]
    for a, b in zip(got, want):
        _same(a, b)
