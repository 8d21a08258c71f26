"""The training step as the Trainer compiles it (Method.compile_parts: student, key encoder and
teacher each through torch.compile, forward and backward) has no graph break and does not
recompile at a fixed batch size after the second step.

Backend "aot_eager": graph breaks and recompiles are decided by Dynamo before any backend runs,
and AOTAutograd traces the backward graph as inductor would; inductor's C++ code generation for
three networks takes minutes on a 2-core CPU and adds nothing to what is checked here."""
import contextlib
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.backends.debugging import aot_eager
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from train_utils import TinyLoader, tiny_cfg  # noqa: E402


class CountingBackend:
    """aot_eager that counts the graphs handed to it (one per compile or recompile)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return aot_eager(gm, example_inputs)


@pytest.mark.slow
@pytest.mark.parametrize("student", ["test_efficientnet"])
def test_disco_step_compiles_fullgraph_without_recompiles(tmp_path, student, monkeypatch):
    from bench_step import random_teacher
    from fastdisco.distributed import DistInfo
    from fastdisco.engine.trainer import Trainer

    torch._dynamo.reset()
    counters.clear()
    # bf16 autocast, channels_last, grouped BN (shuffle_bn_group=4 of 8): the Trainer's settings
    cfg = tiny_cfg(tmp_path, "disco", model={"student": student, "teacher": "test_resnet"},
                   train={"compile": True, "precision": "bf16", "channels_last": True, "deterministic": False})
    backend = CountingBackend()
    real_compile = torch.compile
    seen = []

    def strict_compile(fn, **options):  # the Trainer's own calls, plus fullgraph and the counting backend
        seen.append(options)
        return real_compile(fn, **{**options, "fullgraph": True, "backend": backend})
    monkeypatch.setattr(torch, "compile", strict_compile)
    with contextlib.ExitStack() as owned:
        tr = Trainer(cfg, DistInfo(), owned, TinyLoader(), random_teacher(cfg.model, "embedding"))
        assert tr.method.run_student is not tr.student  # compiled by the Trainer itself
        tr._it = iter(tr.loader)
        tr.step()
        tr.step()
        after_two = backend.graphs, counters["stats"]["unique_graphs"]
        for _ in range(3):
            tr.step()
    assert len(seen) == 3  # student, teacher, key encoder: each compiled by the Trainer
    assert not counters["graph_break"], dict(counters["graph_break"])
    # Student.forward with grad (both views share it) and without (the key encoder: same code,
    # other grad mode), Teacher.forward: three graphs, and none added after the second step
    assert after_two == (3, 3), after_two
    assert (backend.graphs, counters["stats"]["unique_graphs"]) == after_two, "recompiled after the second step"
    assert tr.step_no == 5 and int(tr.n_bad) == 0


def _graphs_after(fn, inputs: list) -> int:
    """How many graphs `fn` compiles to (fullgraph) over calls on `inputs`."""
    torch._dynamo.reset()
    counters.clear()
    backend = CountingBackend()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    for x in inputs:
        compiled(x)
    return backend.graphs


def test_queue_enqueue_is_capturable_in_place():
    """CUDA-graph capture needs fixed addresses and no Python-side state that changes per step:
    the queue writes in place into one buffer and its write pointer is a device tensor, so the
    enqueue traces to one graph that serves every step (a Python int pointer would be baked in
    as a constant and recompile each step) and wraps around like the eager one."""
    from fastdisco.models.student import KeyQueue

    torch.manual_seed(0)
    q, ref = KeyQueue(20, 8), KeyQueue(20, 8)
    ref.load_state_dict(q.state_dict())
    addr = q.keys.data_ptr()
    ks = [torch.randn(6, 8) for _ in range(5)]  # 30 keys into 20 slots: wraps around

    graphs = _graphs_after(q.enqueue, ks)
    for k in ks:
        ref.enqueue(k)
    assert graphs == 1 and not counters["graph_break"]
    assert q.keys.data_ptr() == addr and isinstance(q.ptr, torch.Tensor)
    assert torch.equal(q.keys, ref.keys) and int(q.ptr) == 30 % 20


def test_ema_update_is_capturable_in_place():
    from fastdisco.models.student import ema_update, make_key_encoder

    student = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    key = make_key_encoder(student)
    addrs = [p.data_ptr() for p in key.parameters()]
    graphs = _graphs_after(lambda m: ema_update(key, student, m), [0.99] * 3)
    assert graphs == 1 and not counters["graph_break"]
    assert [p.data_ptr() for p in key.parameters()] == addrs


def test_compile_mode_reaches_torch_compile(monkeypatch):
    from fastdisco.config import TrainConfig, UsageError, apply_overrides, Config
    from fastdisco.engine.trainer import compile_options
    from fastdisco.models.methods import MoCoV2

    assert compile_options(TrainConfig()) == {"dynamic": False}  # static shapes: see compile_options
    assert compile_options(TrainConfig(compile_mode="reduce-overhead")) == {"dynamic": False, "mode": "reduce-overhead"}
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    m = MoCoV2.__new__(MoCoV2)
    torch.nn.Module.__init__(m)
    m.run_student, m.teacher, m.key_encoder = torch.nn.Identity(), None, torch.nn.Identity()
    m.compile_parts(mode="max-autotune")
    assert seen == [{"mode": "max-autotune"}] * 2  # student and key encoder
    with pytest.raises(UsageError, match="train.compile_mode"):
        apply_overrides(Config(), {"train": {"compile_mode": "cudagraphs"}})
