"""Issue 15 item 7: defaults that follow each method's recipe.

- optim.decay_norm_bias "auto": the official MoCo / DisCo code decays every parameter (mocov2,
  disco: norms and biases decayed); SSLD's PaddleClas student exempts its BatchNorms (ssld,
  supervised: not decayed). Checked on the optimizer a real run builds (its checkpoint).
- `eval ssld`'s teacher agreement uses the teacher's stored BN statistics, even when the teacher
  was built for training (BN in train mode): agreement must not depend on the rest of the batch.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastdisco.config import Config, build_config, decay_norm_bias
from fastdisco.engine.trainer import train
from fastdisco.io import safe_torch_load

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import TinyLoader, tiny_cfg  # noqa: E402


def _norm_bias_decay(tmp_path, method: str, **optim) -> float:
    """The weight decay of the norms-and-biases group of the optimizer a 1-step run trained with."""
    cfg = tiny_cfg(tmp_path, method, optim={"weight_decay": 1e-4, **optim}, train={"max_steps": 1})
    train(cfg, loader=TinyLoader(num_samples=16, batch_size=8, num_views=2 if method == "mocov2" else 1))
    groups = safe_torch_load(tmp_path / "run" / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[0]["weight_decay"] == 1e-4  # weights always decay
    return groups[1]["weight_decay"]


def test_decay_norm_bias_default_follows_the_method(tmp_path):
    assert Config().optim.decay_norm_bias == "auto"
    assert _norm_bias_decay(tmp_path / "moco", "mocov2") == 1e-4        # official MoCo / DisCo: every parameter
    assert _norm_bias_decay(tmp_path / "sup", "supervised") == 0.0       # PaddleClas: BN exempt
    assert _norm_bias_decay(tmp_path / "off", "mocov2", decay_norm_bias=False) == 0.0  # explicit wins


@pytest.mark.parametrize("method,expected", [("mocov2", True), ("disco", True), ("ssld", False),
                                             ("supervised", False)])
def test_decay_norm_bias_resolution(method, expected):
    assert decay_norm_bias(build_config(sets=[f"method.name={method}"])) is expected
    assert decay_norm_bias(build_config(sets=[f"method.name={method}", "optim.decay_norm_bias=false"])) is False
    assert decay_norm_bias(build_config(sets=[f"method.name={method}", "optim.decay_norm_bias=true"])) is True


def test_recipe_configs_state_their_weight_decay():
    root = Path(__file__).parent.parent / "configs"
    assert decay_norm_bias(build_config(root / "disco_effb0_r50.yaml")) is True
    assert decay_norm_bias(build_config(root / "mocov2_r18.yaml")) is True
    assert decay_norm_bias(build_config(root / "ssld_mv3l_r50.yaml")) is False
    final = build_config(root / "ssld_mv3l_r50_final.yaml")
    assert final.model.init_ckpt == "runs/ssld_mv3l_r50" and final.method.name == "ssld"
    assert decay_norm_bias(final) is False


def test_every_config_states_its_deviations():
    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
        text = " ".join(header)
        assert "Remaining deviations" in text or "Not a reproduction" in text, path.name
        build_config(path)  # and it is a valid config


def test_ssld_agreement_uses_the_teachers_stored_bn_statistics():
    """A student that is an exact copy of the teacher agrees with it on every image when both use
    the stored BN statistics; with the teacher's train-mode BN (batch statistics, which a
    training Teacher keeps through .eval()) the top-1 classes differ on many images."""
    import copy

    import timm

    from fastdisco.augment.recipes import IMAGENET_MEAN, IMAGENET_STD
    from fastdisco.evaluation.ssld import ssld_eval
    from fastdisco.models.teacher import Teacher

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    with torch.no_grad():  # stored statistics far from any batch's: train- and eval-mode BN disagree
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 3)
    student = copy.deepcopy(net).eval()
    teacher = Teacher(net, torch.nn.Identity(), IMAGENET_MEAN, IMAGENET_STD, bn="train", output="logits")
    x = torch.randn(48, 3, 32, 32)
    batches = [(x[i:i + 16], torch.full((16,), -1)) for i in range(0, 48, 16)]
    teacher.eval()
    with torch.no_grad():  # the training teacher's own outputs really do use batch statistics
        assert teacher.backbone.bn1.training
        assert (teacher(x[:16]).argmax(1) != student(x[:16]).argmax(1)).any()
    r = ssld_eval(student, batches, teacher=teacher)
    assert r["agreement_top1"] == 100.0 and r["num_samples"] == 48
    assert teacher.backbone.bn1.training  # the teacher's training BN mode is restored afterwards
