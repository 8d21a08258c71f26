"""model.init_ckpt (issue 15 item 5): a run starts from given weights (a fastdisco run checkpoint
or an exported backbone) with a fresh optimizer, schedule and step; keys are matched strictly."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastdisco.engine.trainer import build_models, train
from fastdisco.errors import FastdiscoError
from fastdisco.io import safe_torch_load
from fastdisco.models.methods import METHODS

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import TinyLoader, tiny_cfg  # noqa: E402


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A 4-step mocov2 run whose weights differ from any fresh init."""
    tmp = tmp_path_factory.mktemp("init_src")
    cfg = tiny_cfg(tmp, "mocov2", train={"max_steps": 4, "ckpt_every": 4})
    train(cfg, loader=TinyLoader(num_samples=32, batch_size=8))
    return tmp / "run"


def test_init_from_run_checkpoint_loads_weights_but_starts_fresh(first_run, tmp_path):
    src = safe_torch_load(first_run / "checkpoints" / "last.pt")
    cfg = tiny_cfg(tmp_path, "mocov2", model={"init_ckpt": str(first_run)},
                   train={"max_steps": 3, "seed": 7, "log_every": 1})
    student, _, method = build_models(cfg, METHODS["mocov2"])
    for k, v in student.state_dict().items():  # backbone and head come from the file
        assert torch.equal(v, src["student"][k]), k
    for k, v in method.key_encoder.state_dict().items():  # the key encoder copies the initialised student
        assert torch.equal(v, src["student"][k]), k
    out = train(cfg, loader=TinyLoader(num_samples=32, batch_size=8))
    assert out["step"] == 3  # the step count restarts (the source run stopped at 4)
    state = safe_torch_load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["config"]["model"]["init_ckpt"] == str(first_run)
    import json

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the schedule restarts too: step 1 runs at the base lr (cosine from step 0, no warm-up)
    assert rows[0]["step"] == 1 and rows[0]["lr"] == pytest.approx(0.3)


def test_init_from_exported_backbone_keeps_a_fresh_head(first_run, tmp_path):
    from safetensors.torch import save_file

    src = safe_torch_load(first_run / "checkpoints" / "last.pt")["student"]
    backbone = {k[len("backbone."):]: v.contiguous() for k, v in src.items() if k.startswith("backbone.")}
    save_file(backbone, str(tmp_path / "export.safetensors"))
    cfg = tiny_cfg(tmp_path, "mocov2", model={"init_ckpt": str(tmp_path / "export.safetensors")})
    student, _, _ = build_models(cfg, METHODS["mocov2"])
    fresh, _, _ = build_models(tiny_cfg(tmp_path, "mocov2"), METHODS["mocov2"])
    for k, v in student.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), k
    for k, v in student.head.state_dict().items():  # same seed, no head in the file: the fresh init
        assert torch.equal(v, fresh.head.state_dict()[k]), k
        assert not torch.equal(v, src[f"head.{k}"]), k


def test_init_refuses_weights_of_another_architecture(first_run, tmp_path):
    cfg = tiny_cfg(tmp_path, "mocov2", model={"init_ckpt": str(first_run), "student": "test_efficientnet"})
    with pytest.raises(FastdiscoError, match=r"init_ckpt .*does not fit: \d+ missing keys: .*unexpected keys"):
        build_models(cfg, METHODS["mocov2"])
    cfg = tiny_cfg(tmp_path, "mocov2", model={"init_ckpt": str(first_run), "proj_hidden": 32})
    with pytest.raises(FastdiscoError, match=r"projection head does not fit: .*wrong shape .*0\.weight"):
        build_models(cfg, METHODS["mocov2"])
    cfg = tiny_cfg(tmp_path, "mocov2", model={"init_ckpt": str(tmp_path / "nope.pt")})
    with pytest.raises(FastdiscoError, match="model.init_ckpt: file not found"):
        build_models(cfg, METHODS["mocov2"])


def test_init_refuses_a_pickle_that_is_not_plain_weights(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps({"student": Evil()}))
    cfg = tiny_cfg(tmp_path, "mocov2", model={"init_ckpt": str(bad)})
    with pytest.raises(FastdiscoError, match="weights_only"):
        build_models(cfg, METHODS["mocov2"])
    assert not (tmp_path / "pwned").exists()
