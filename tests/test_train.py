"""The engine end to end on CPU: each method learns, resume is bit-exact, NaN handling, and a run
on real (tiny, prepared) data leaves the run directory of the design."""
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from fastdisco.errors import FastdiscoError
from fastdisco.io import safe_torch_load
from fastdisco.engine.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import TinyLoader, TinyTeacher, tiny_cfg  # noqa: E402


def _metrics(cfg):
    return [json.loads(line) for line in open(Path(cfg.train.out_dir) / "metrics.jsonl")]


@pytest.mark.parametrize("method", ["mocov2", "disco", "ssld"])
def test_methods_learn(tmp_path, method):
    over = {"train": {"max_steps": 24, "log_every": 4, "ckpt_every": 100}}
    if method == "mocov2":  # queue of one batch: real negatives from the first step on
        over["method"] = {"queue_size": 8}
    cfg = tiny_cfg(tmp_path, method, **over)
    teacher = {"mocov2": None, "disco": TinyTeacher(128), "ssld": TinyTeacher(10)}[method]
    before = None if teacher is None else [p.clone() for p in teacher.parameters()]
    train(cfg, loader=TinyLoader(num_views=1 if method == "ssld" else 2), teacher=teacher)
    rows = _metrics(cfg)
    assert [r["step"] for r in rows] == list(range(4, 25, 4))
    for r in rows:
        assert all(torch.isfinite(torch.tensor(v)) for k, v in r.items() if k != "epoch")
    first, last = rows[0], rows[-1]
    parts = {"mocov2": ["infonce"], "disco": ["distill_v0", "distill_v1"], "ssld": ["symkl"]}[method]
    factor = 0.95 if method == "mocov2" else 0.8  # instance discrimination learns slower
    for k in parts:
        assert last[k] < factor * first[k], (k, first[k], last[k])
    if teacher is not None:  # the teacher is used and never trained
        assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


class SignalLoader(TinyLoader):
    """Sends SIGTERM to this process while handing out batch number `at` (0-based, global)."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at = at

    def __iter__(self):
        for b in super().__iter__():
            if self._served - 1 == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield b


def test_resume_after_sigterm_is_bit_exact(tmp_path):
    """disco + grad accumulation + shuffle-BN: interrupt by SIGTERM in step 3 (of 7), re-run the
    same command, compare everything with an uninterrupted run (deterministic CPU)."""
    over = {"train": {"max_steps": 7, "log_every": 2, "ckpt_every": 100}, "optim": {"grad_accum": 2}}
    ref_cfg = tiny_cfg(tmp_path / "ref", "disco", **over)
    train(ref_cfg, loader=TinyLoader(), teacher=TinyTeacher(128))

    cfg = tiny_cfg(tmp_path / "cut", "disco", **over)
    first = train(cfg, loader=SignalLoader(at=5), teacher=TinyTeacher(128))
    assert first["interrupted"] and first["step"] == 3
    assert safe_torch_load(first["last_checkpoint"])["step"] == 3
    second = train(cfg, loader=TinyLoader(), teacher=TinyTeacher(128))  # fresh objects: all from disk
    assert second["step"] == 7 and not second["interrupted"]

    a = safe_torch_load(Path(ref_cfg.train.out_dir) / "checkpoints/last.pt")
    b = safe_torch_load(Path(cfg.train.out_dir) / "checkpoints/last.pt")
    for part in ("student", "key_encoder", "queue"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert a["loader"] == b["loader"] and a["epoch"] == b["epoch"]
    steps = [r["step"] for r in _metrics(cfg)]
    assert steps == [2, 3, 4, 6, 7]


def test_nan_policy(tmp_path):
    # the 4th batch (step 4, 1-based as in metrics.jsonl and checkpoint names) is NaN
    cfg = tiny_cfg(tmp_path / "stop", "mocov2", train={"max_steps": 6, "ckpt_every": 2})
    with pytest.raises(FastdiscoError, match=r"non-finite loss at step 4 .*last good checkpoint: .*step_00000002\.pt"):
        train(cfg, loader=TinyLoader(poison_batch=3))
    assert safe_torch_load(Path(cfg.train.out_dir) / "checkpoints/last.pt")["step"] == 2

    cfg = tiny_cfg(tmp_path / "skip", "mocov2", train={"max_steps": 6, "nan_policy": "skip"})
    result = train(cfg, loader=TinyLoader(poison_batch=3))
    assert result["step"] == 6 and _metrics(cfg)[-1]["nonfinite_steps"] == 1  # cumulative
    state = safe_torch_load(result["last_checkpoint"])
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    assert torch.isfinite(state["queue"]["keys"]).all()


def test_real_prepared_data_run_directory(tmp_path):
    """mocov2 from a tiny prepared dataset through the real loader; the run directory holds
    config.yaml, provenance.json, metrics.jsonl, TensorBoard events and design-format checkpoints."""
    import yaml

    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder

    src = write_synthetic_folder(tmp_path / "src", num_classes=4, per_class=8, size=40)
    prepare_dataset(src, tmp_path / "data", formats="dali", workers=1)
    cfg = tiny_cfg(tmp_path, "mocov2", data={"path": str(tmp_path / "data"), "num_workers": 0},
                   train={"max_steps": 5, "ckpt_every": 2, "keep_ckpts": 2, "tensorboard": True,
                          "deterministic": False})
    result = train(cfg)
    run = Path(cfg.train.out_dir)
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["name"] == "mocov2"
    assert "versions" in json.loads((run / "provenance.json").read_text())
    assert [r["step"] for r in _metrics(cfg)] == [2, 4, 5]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == ["step_00000004.pt", "step_00000005.pt"]
    state = safe_torch_load(result["last_checkpoint"])
    assert state["format"] == "fastdisco-ckpt-v1" and state["step"] == 5 and state["student_name"] == "test_resnet"
    assert all(k.startswith(("backbone.", "head.")) for k in state["student"])
    assert state["loader"] == {"epoch": 1, "batch": 1}  # 32 samples / 8 = 4 batches per epoch; 5 consumed


def test_same_seed_same_student_init_with_or_without_teacher(tmp_path):
    """MoCo v2 alone and DisCo with the same train.seed start from identical student weights and
    queue: loading the teacher (which draws from the RNG) happens after the student is built."""
    import timm

    from fastdisco.config import Config
    from fastdisco.models.methods import METHODS
    from fastdisco.engine.trainer import build_models

    torch.manual_seed(5)
    tpath = tmp_path / "teacher.pt"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), tpath)

    def make(method):
        cfg = Config()
        cfg.model.student, cfg.model.proj_hidden, cfg.model.proj_dim = "test_resnet", 16, 8
        cfg.method.name, cfg.method.queue_size, cfg.train.seed = method, 32, 7
        if method == "disco":
            cfg.model.teacher, cfg.model.teacher_ckpt, cfg.model.teacher_format = "test_resnet", str(tpath), "timm"
        return build_models(cfg, METHODS[method])

    (s_moco, t_moco, m_moco), (s_disco, t_disco, m_disco) = make("mocov2"), make("disco")
    assert t_moco is None and t_disco is not None
    a, b = s_moco.state_dict(), s_disco.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(m_moco.queue.keys, m_disco.queue.keys, rtol=0, atol=0)
    assert Config().method.distill_reduction == "sum"  # the official DisCo weight by default
