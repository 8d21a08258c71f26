"""Between two logging steps the training step never waits on the host: a TorchDispatchMode
counts every op that makes the host wait for the device on CUDA (a scalar read: .item(), bool(),
int(), float(); nonzero and the other data-dependent-shape ops; device-to-host copies; .tolist()
/ .numpy()), around Trainer.step() as fit() calls it. On CPU nothing actually waits, so the
counter flags the ops that WOULD sync on CUDA; on a GPU (gpu marker) torch's own sync debug mode
checks the same steps for real."""
import contextlib
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import TinyLoader, TinyTeacher, tiny_cfg  # noqa: E402

aten = torch.ops.aten
# ops whose result (a value or a shape) the host must read from the device
SYNCING = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.item.default, aten.equal.default,
           aten.nonzero.default, aten.nonzero_static.default, aten.masked_select.default,
           aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
           aten.allclose.default}


class HostSyncCounter(TorchDispatchMode):
    """Records (op name) for each host sync an op would cause on CUDA; Tensor.tolist / numpy,
    which on CPU tensors read memory without dispatching, are wrapped while it is active."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self._patched = contextlib.ExitStack()

    def __enter__(self):
        for name in ("tolist", "numpy"):
            orig = getattr(torch.Tensor, name)

            def wrapped(t, *a, _orig=orig, _name=name, **k):
                self.syncs.append(f"Tensor.{_name}")
                return _orig(t, *a, **k)
            setattr(torch.Tensor, name, wrapped)
            self._patched.callback(setattr, torch.Tensor, name, orig)
        return super().__enter__()

    def __exit__(self, *exc):
        self._patched.close()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCING:
            self.syncs.append(str(func))
        elif func is aten.index.Tensor and any(i is not None and i.dtype in (torch.bool, torch.uint8)
                                               for i in args[1]):
            self.syncs.append("index with a boolean mask")
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.syncs.append(str(func))
        elif func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            dst = kwargs.get("device") if func is aten._to_copy.default else args[0].device
            if dst is not None and src.device.type != "cpu" and torch.device(dst).type == "cpu":
                self.syncs.append(f"{func} device-to-host")
        return func(*args, **(kwargs or {}))


class StagedLoader(TinyLoader):
    """TinyLoader whose batches are made and moved to `device` before the counted steps (the
    real loaders deliver views already on the device)."""

    def __init__(self, device, **kw):
        super().__init__(**kw)
        self.staged = [type(b)([v.to(device) for v in b.views], b.labels.to(device), b.indices.to(device), b.params)
                       for b in TinyLoader.__iter__(self)]

    def __iter__(self):
        yield from self.staged


def _trainer(tmp_path, device, method, **over):
    from fastdisco.distributed import DistInfo
    from fastdisco.engine.trainer import Trainer

    cfg = tiny_cfg(tmp_path, method, **over)
    cfg.train.device = device.type
    owned = contextlib.ExitStack()
    teacher = TinyTeacher(128).to(device) if method == "disco" else None
    tr = Trainer(cfg, DistInfo(device=device), owned, StagedLoader(device, num_samples=64, batch_size=8), teacher)
    tr._it = iter(tr.loader)
    return tr, owned


CASES = [("disco", {}), ("mocov2", {"optim": {"name": "lars", "clip_grad": 1.0}}),
         ("disco", {"optim": {"name": "adamw", "grad_accum": 2}})]


@pytest.mark.parametrize("method,over", CASES, ids=["disco-sgd", "mocov2-lars-clip", "disco-adamw-accum2"])
def test_no_host_sync_between_log_points(tmp_path, method, over):
    tr, owned = _trainer(tmp_path, torch.device("cpu"), method, **over)
    with owned:
        with HostSyncCounter() as c:
            for _ in range(3):  # from the very first step: no lazy first-step check either
                tr.step()
        assert c.syncs == [], c.syncs
        assert tr.step_no == 3
        # the logging step fetches the sums and the non-finite count: the counter sees that
        with HostSyncCounter() as c:
            tr._check_nonfinite()
            tr._metrics(1.0, 3)
        assert any("_local_scalar_dense" in s for s in c.syncs) and "Tensor.tolist" in c.syncs


def test_counter_flags_what_syncs():
    x = torch.tensor([1.0, float("nan"), 3.0])
    with HostSyncCounter() as c:
        x.sum().item()
        bool(torch.isfinite(x).all())
        x[torch.isfinite(x)]
        x.tolist()
        torch.nonzero(x)
    assert c.syncs[:2] == ["aten._local_scalar_dense.default"] * 2
    assert c.syncs[2:] == ["index with a boolean mask", "Tensor.tolist", "aten.nonzero.default"], c.syncs


@pytest.mark.gpu
@pytest.mark.parametrize("method,over", CASES, ids=["disco-sgd", "mocov2-lars-clip", "disco-adamw-accum2"])
def test_no_host_sync_on_cuda(tmp_path, method, over):
    # as a GPU run trains: the fused Triton losses, cuDNN autotuning allowed
    over = {**over, "method": {"loss_impl": "auto"}, "train": {"deterministic": False}}
    tr, owned = _trainer(tmp_path, torch.device("cuda"), method, **over)
    with owned:
        tr.step()  # first step: cuBLAS / cuDNN handles, allocator warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                tr.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert tr.step_no == 4
