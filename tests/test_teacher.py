"""Teacher loading: every checkpoint format made here from a tiny timm model, loaded back and
compared to the source model's own outputs; strict-key errors; refusal of code-running pickles;
frozen-ness and the BN mode."""
from __future__ import annotations

import argparse
import os

import pytest
import torch
from torch import nn

import fastdisco  # noqa: F401  (torchvision import fix before timm)
import timm
from fastdisco.config import ModelConfig
from fastdisco.errors import FastdiscoError
from fastdisco.models.teacher import IMAGENET_MEAN, IMAGENET_STD, load_teacher

ARCH = "test_resnet"          # 0.47M parameters, 96-d pooled features
IMNET = dict(teacher_mean=IMAGENET_MEAN, teacher_std=IMAGENET_STD)  # no re-normalisation


def _randomise_bn(m: nn.Module) -> None:
    """Non-default running stats, so a loader that skips them cannot pass."""
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)


class Source(nn.Module):
    """backbone + head, the reference the loaded teacher must reproduce."""

    def __init__(self, head: str = "moco", num_classes: int = 0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = timm.create_model(ARCH, pretrained=False, num_classes=num_classes)
        d = self.backbone.num_features
        if head == "moco":
            self.head = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 16))
        elif head == "bn":  # SwAV / BYOL: Linear-BN-ReLU-Linear
            self.head = nn.Sequential(nn.Linear(d, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
        elif head == "dino":
            self.head = nn.Sequential(nn.Linear(d, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16))
        else:
            self.head = nn.Identity()
        with torch.no_grad():
            _randomise_bn(self)
        self.eval()

    def forward(self, x):
        return self.head(self.backbone(x))


def _prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v.clone() for k, v in sd.items()}


def _cfg(path, **kw) -> ModelConfig:
    kw.setdefault("teacher", ARCH)
    kw.setdefault("teacher_bn", "eval")
    kw.setdefault("teacher_proj_hidden", 64)
    for k, v in IMNET.items():
        kw.setdefault(k, v)
    return ModelConfig(teacher_ckpt=str(path), **kw)


X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- formats
def _mocov2(src: Source) -> dict:
    bb, hd = src.backbone.state_dict(), src.head.state_dict()
    sd = _prefixed(bb, "module.encoder_q.") | _prefixed(hd, "module.encoder_q.fc.")
    sd |= _prefixed(bb, "module.encoder_k.") | _prefixed(hd, "module.encoder_k.fc.")
    sd |= {"module.queue": torch.randn(16, 32), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": ARCH, "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0, 1]}]}}


def _swav(src: Source) -> dict:
    sd = _prefixed(src.backbone.state_dict(), "module.") | _prefixed(src.head.state_dict(), "module.projection_head.")
    sd["module.prototypes.weight"] = torch.randn(30, 16)
    return {"epoch": 400, "state_dict": sd}


def _byol_solo(src: Source) -> dict:  # solo-learn layout
    sd = _prefixed(src.backbone.state_dict(), "backbone.") | _prefixed(src.head.state_dict(), "projector.")
    sd |= _prefixed(src.backbone.state_dict(), "momentum_backbone.")
    sd |= {"predictor.0.weight": torch.randn(16, 16), "classifier.weight": torch.randn(10, 96)}
    return {"epoch": 1, "state_dict": sd}


def _byol_lightly(src: Source) -> dict:  # lightly layout, no container
    sd = _prefixed(src.backbone.state_dict(), "backbone.") | _prefixed(src.head.state_dict(), "projection_head.layers.")
    sd |= _prefixed(src.head.state_dict(), "projection_head_momentum.layers.")
    sd["prediction_head.layers.0.weight"] = torch.randn(16, 16)
    return sd


def _byol_online(src: Source) -> dict:  # online_network.{encoder,projector}
    sd = _prefixed(src.backbone.state_dict(), "online_network.encoder.")
    sd |= _prefixed(src.head.state_dict(), "online_network.projector.net.")
    sd |= _prefixed(src.backbone.state_dict(), "target_network.encoder.")
    return {"online_network_state_dict": sd}


def _dino(src: Source) -> dict:
    t = _prefixed(src.backbone.state_dict(), "backbone.") | _prefixed(src.head.state_dict(), "head.mlp.")
    t |= {"head.last_layer.weight_g": torch.ones(30, 1), "head.last_layer.weight_v": torch.randn(30, 16)}
    s = {k: v + 1 for k, v in t.items()}  # a different student, must not be picked
    return {"student": _prefixed(s, "module."), "teacher": t, "epoch": 100,
            "args": argparse.Namespace(arch=ARCH, out_dim=30), "dino_loss": {"center": torch.zeros(1, 30)}}


def _fastdisco(src: Source) -> dict:
    sd = _prefixed(src.backbone.state_dict(), "backbone.") | _prefixed(src.head.state_dict(), "head.")
    return {"format": "fastdisco-ckpt-v1", "step": 10, "epoch": 1, "config": {"model": {"student": ARCH}},
            "student_name": ARCH, "student": sd, "queue": torch.randn(16, 8), "key_encoder": {}}


EMBEDDING_CASES = [  # (writer, head kind, expected detected format)
    (_mocov2, "moco", "mocov2"),
    (_swav, "bn", "swav"),
    (_byol_solo, "bn", "byol"),
    (_byol_lightly, "bn", "byol"),
    (_byol_online, "bn", "byol"),
    (_dino, "dino", "dino"),
    (_fastdisco, "moco", "fastdisco"),
]


@pytest.mark.parametrize("writer,head,fmt", EMBEDDING_CASES, ids=[c[2] + "-" + c[0].__name__ for c in EMBEDDING_CASES])
def test_embedding_formats_reproduce_source(tmp_path, writer, head, fmt):
    src = Source(head)
    path = tmp_path / "ckpt.pth"
    torch.save(writer(src), path)
    teacher = load_teacher(_cfg(path))
    assert teacher.format == fmt
    with torch.no_grad():
        assert torch.equal(teacher(X), src(X))
    # an explicit format is honoured too
    assert torch.equal(load_teacher(_cfg(path, teacher_format=fmt))(X), teacher(X))


def test_timm_and_safetensors_logits(tmp_path):
    from safetensors.torch import save_file

    src = Source("none", num_classes=10)
    torch.save(src.backbone.state_dict(), tmp_path / "plain.pth")
    save_file(src.backbone.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": _prefixed(src.backbone.state_dict(), "module.")}, tmp_path / "ddp.pth")
    with torch.no_grad():
        ref = src(X)
    for name in ("plain.pth", "w.safetensors", "ddp.pth"):
        t = load_teacher(_cfg(tmp_path / name), output="logits")
        assert t.format == "timm"
        assert torch.equal(t(X), ref), name
    # embedding from a plain timm checkpoint = pooled features; the classifier is left out
    emb = load_teacher(_cfg(tmp_path / "w.safetensors"), output="embedding")
    src.backbone.reset_classifier(0)
    assert torch.equal(emb(X), src.backbone(X))


def test_mocov2_ignores_momentum_encoder(tmp_path):
    src = Source("moco")
    ck = _mocov2(src)
    for k in ck["state_dict"]:  # a garbage key encoder must not leak into the teacher
        if ".encoder_k." in k:
            ck["state_dict"][k] = torch.full_like(ck["state_dict"][k], 7)
    torch.save(ck, tmp_path / "m.pth")
    assert torch.equal(load_teacher(_cfg(tmp_path / "m.pth"))(X), src(X))


# --------------------------------------------------------------------------- normalisation
def test_renormalises_to_teachers_mean_std(tmp_path):
    src = Source("none", num_classes=10)
    torch.save(src.backbone.state_dict(), tmp_path / "w.pth")
    t = load_teacher(ModelConfig(teacher=ARCH, teacher_ckpt=str(tmp_path / "w.pth"), teacher_bn="eval"),
                     output="logits")
    # test_resnet's timm pretrained_cfg says mean = std = 0.5
    raw = X * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = src((raw - 0.5) / 0.5)
    torch.testing.assert_close(t(X), ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(t(X), src(X), atol=1e-3)  # the conversion did something


# --------------------------------------------------------------------------- frozen, BN mode
def test_frozen_and_bn_modes(tmp_path):
    src = Source("bn")
    torch.save(_swav(src), tmp_path / "s.pth")
    xg = X.clone().requires_grad_(True)

    t = load_teacher(_cfg(tmp_path / "s.pth", teacher_bn="eval"))
    assert not any(p.requires_grad for p in t.parameters())
    out = t(xg)
    assert not out.requires_grad
    # eval BN: independent of the rest of the batch (up to conv kernels' batch-size-dependent rounding)
    torch.testing.assert_close(t(X[:2]), out[:2], rtol=1e-5, atol=1e-6)

    t = load_teacher(_cfg(tmp_path / "s.pth", teacher_bn="train"))
    t.eval(); t.train()  # the engine's calls change nothing
    bns = [m for m in t.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.training for m in bns)
    assert not any(m.training for m in t.modules() if not isinstance(m, nn.modules.batchnorm._BatchNorm)
                   and not isinstance(m, (type(t),)) and len(list(m.children())) == 0)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    out = t(X)
    src.train()
    with torch.no_grad():
        ref = src(X)  # batch statistics, like the official code's train-mode teacher
    assert torch.equal(out, ref)
    after = t.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "running stats must stay as loaded"
    assert not torch.allclose(t(X[:2]), out[:2], atol=1e-3)  # batch statistics really used


def test_channels_last_and_dtype(tmp_path):
    src = Source("moco")
    torch.save(_mocov2(src), tmp_path / "m.pth")
    t = load_teacher(_cfg(tmp_path / "m.pth"), channels_last=True, dtype=torch.float64)
    assert t.backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(t(X.double()).float(), src(X), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- errors
def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_strict_keys_missing_and_unexpected(tmp_path):
    ck = _mocov2(Source("moco"))
    sd = ck["state_dict"]
    del sd["module.encoder_q.layer4.0.conv1.weight"]
    sd["module.encoder_q.extra.weight"] = torch.zeros(3)
    torch.save(ck, tmp_path / "m.pth")
    with pytest.raises(FastdiscoError) as e:
        load_teacher(_cfg(tmp_path / "m.pth"))
    msg = _one_line(e)
    assert "layer4.0.conv1.weight" in msg and "extra.weight" in msg
    assert "missing" in msg and "unexpected" in msg and "mocov2" in msg


def test_wrong_architecture_readable(tmp_path):
    torch.save(_mocov2(Source("moco")), tmp_path / "m.pth")
    with pytest.raises(FastdiscoError) as e:
        load_teacher(_cfg(tmp_path / "m.pth", teacher="test_efficientnet"))
    msg = _one_line(e)
    assert "test_efficientnet" in msg and "missing" in msg and "unexpected" in msg and "mocov2" in msg
    assert len(msg) < 1500  # long key lists are truncated
    with pytest.raises(FastdiscoError, match="Unknown model"):
        load_teacher(_cfg(tmp_path / "m.pth", teacher="no_such_net"))


def test_missing_head_and_classifier_errors(tmp_path):
    src = Source("moco")
    ck = _mocov2(src)
    torch.save(ck, tmp_path / "m.pth")
    with pytest.raises(FastdiscoError, match="no classifier"):
        load_teacher(_cfg(tmp_path / "m.pth"), output="logits")
    with pytest.raises(FastdiscoError, match="hidden width is 64"):
        load_teacher(_cfg(tmp_path / "m.pth", teacher_proj_hidden=2048))
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if ".fc." not in k}
    torch.save(ck, tmp_path / "nohead.pth")
    with pytest.raises(FastdiscoError, match="no projection head"):
        load_teacher(_cfg(tmp_path / "nohead.pth", teacher_format="mocov2"))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(FastdiscoError) as e:
        load_teacher(_cfg(tmp_path / "evil.pth"))
    _one_line(e)
    assert "weights_only" in str(e.value)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(FastdiscoError, match="not found"):
        load_teacher(_cfg(tmp_path / "nope.pth"))


# --------------------------------------------------------------------------- fastdisco's own runs
@pytest.mark.parametrize("method,output", [("disco", "embedding"), ("ssld", "logits")])
def test_engine_checkpoint_as_teacher(tmp_path, method, output):
    """A checkpoint written by the engine's own CheckpointManager from its own Student: how a
    teacher pre-trained with `fastdisco train --method mocov2` is used for DisCo."""
    models = pytest.importorskip("fastdisco.models.student")
    from fastdisco.engine.checkpoint import FORMAT, CheckpointManager

    torch.manual_seed(0)
    student = models.Student(ARCH, head_hidden=64, head_dim=16, num_classes=5 if method == "ssld" else 0)
    with torch.no_grad():
        _randomise_bn(student)
    student.eval()
    path = CheckpointManager(tmp_path / "run").save(
        {"format": FORMAT, "step": 3, "epoch": 0, "config": {"model": {"student": ARCH}},
         "student_name": ARCH, "student": student.state_dict(), "queue": torch.randn(16, 8),
         "optimizer": {"state": {}, "param_groups": []}}, step=3)
    t = load_teacher(_cfg(path, teacher=""), output=output)  # the name comes from the file
    assert t.format == "fastdisco" and t.name == ARCH
    with torch.no_grad():
        assert torch.equal(t(X), student(X))


@pytest.mark.gpu
def test_compiled_teacher_on_cuda(tmp_path):
    src = Source("bn").cuda()
    torch.save(_swav(src.cpu()), tmp_path / "s.pth")
    t = load_teacher(_cfg(tmp_path / "s.pth", teacher_bn="train"), device="cuda", channels_last=True)
    x = torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = t(x)
        t.compile()
        compiled = t(x)
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=2e-2, atol=2e-2)
    assert not compiled.requires_grad
