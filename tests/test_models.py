"""Student layout, grouped (shuffle-)BN against per-group BN, EMA, the key queue."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdisco.config import ModelConfig
from fastdisco.models.student import (GroupedBatchNorm2d, KeyQueue, Student, build_student, convert_grouped_bn,
                              ema_update, make_key_encoder, shuffled_forward)


def test_student_keys_and_shapes():
    s = Student("test_resnet", head_hidden=32, head_dim=16)
    keys = s.state_dict().keys()
    assert {"head.0.weight", "head.2.bias"} <= set(keys)
    assert all(k.startswith(("backbone.", "head.")) for k in keys)
    assert s(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    ssld = build_student(ModelConfig(student="test_resnet", num_classes=7), "ssld")
    assert isinstance(ssld.head, nn.Identity) and ssld(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("channels_last", [False, True])
def test_grouped_bn_equals_bn_per_group(channels_last):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2), ref.bias.normal_()
    gbn = convert_grouped_bn(nn.Sequential(ref), group_size=4)[0]
    ref = nn.BatchNorm2d(5)
    ref.load_state_dict(gbn.state_dict())
    x = torch.randn(12, 5, 3, 3) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = gbn(x)
    # reference: group g = samples i with i % 3 == g, each normalised by plain BN on its own
    expect, means, vars_ = torch.empty_like(x), [], []
    for g in range(3):
        r = nn.BatchNorm2d(5)
        r.load_state_dict(ref.state_dict())
        expect[g::3] = r(x[g::3])
        means.append(r.running_mean), vars_.append(r.running_var)
    torch.testing.assert_close(y, expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gbn.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(gbn.running_var, torch.stack(vars_).mean(0))
    # one group, or a size that does not split: plain BN
    gbn.load_state_dict(ref.state_dict())
    torch.testing.assert_close(gbn(x[:4]), ref(x[:4]))


def test_convert_keeps_timm_keys_and_bnact():
    s = Student("test_efficientnet", head_hidden=8, head_dim=4)  # timm BatchNormAct2d inside
    s.eval()
    x = torch.randn(2, 3, 32, 32)
    before, keys = s(x), list(s.state_dict())
    convert_grouped_bn(s, 4)
    assert list(s.state_dict()) == keys
    assert any(isinstance(m, GroupedBatchNorm2d) for m in s.modules())
    torch.testing.assert_close(s(x), before)  # eval: running stats, activation kept


def test_ema_and_key_encoder():
    q = nn.Linear(3, 2)
    k = make_key_encoder(q)
    assert not any(p.requires_grad for p in k.parameters())
    with torch.no_grad():
        q.weight.add_(1.0)
    old = k.weight.clone()
    ema_update(k, q, 0.9)
    torch.testing.assert_close(k.weight, 0.9 * old + 0.1 * q.weight)


def test_shuffled_forward_undoes_the_permutation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(6, 3, 2, 2)
    torch.testing.assert_close(shuffled_forward(net, x), net(x))


def test_queue_ring_buffer():
    qu = KeyQueue(size=5, dim=2)
    k = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    qu.enqueue(k)
    qu.enqueue(k)  # wraps around: rows 3, 4, 0
    expect = F.normalize(k, dim=1)
    torch.testing.assert_close(qu.keys[[1, 2, 3, 4, 0]], torch.cat([expect[1:], expect]))
    assert int(qu.ptr) == 1
    qu.enqueue(torch.full((1, 2), float("nan")))  # a skipped non-finite step: zeros, not NaN
    assert torch.isfinite(qu.keys).all()


# --------------------------------------------------------------------------- model.stem: small
@pytest.mark.parametrize("name", ["resnet18", "resnet10t"])
def test_small_stem_keeps_resolution(name):
    """32 px in: the ImageNet stem gives a 1x1 final map, the small stem 4x4 (3x3/1 conv, no pool)."""
    from fastdisco.models.student import set_stem
    import timm

    x = torch.randn(2, 3, 32, 32)
    default = timm.create_model(name, pretrained=False, num_classes=0)
    assert default.forward_features(x).shape[-1] == 1
    s = Student(name, head_hidden=16, head_dim=8, stem="small")
    first = s.backbone.conv1[0] if isinstance(s.backbone.conv1, nn.Sequential) else s.backbone.conv1
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)
    assert isinstance(s.backbone.maxpool, nn.Identity)
    assert s.backbone.forward_features(x).shape[-1] == 4
    assert s(x).shape == (2, 8)
    # "default" leaves the model as timm builds it
    assert set_stem(default, "default") is default and isinstance(default.maxpool, nn.MaxPool2d)


def test_small_stem_config_and_errors():
    from fastdisco.errors import FastdiscoError

    s = build_student(ModelConfig(student="test_resnet", stem="small", proj_hidden=8, proj_dim=4), "mocov2")
    assert isinstance(s.backbone.maxpool, nn.Identity)
    with pytest.raises(FastdiscoError, match="only converts timm ResNet-family"):
        Student("test_efficientnet", head_hidden=8, head_dim=4, stem="small")
    with pytest.raises(FastdiscoError, match="unknown stem"):
        Student("test_resnet", head_hidden=8, head_dim=4, stem="tiny")


def test_small_stem_round_trips_through_teacher_and_eval(tmp_path):
    """A small-stem run's checkpoint loads as a teacher and as an eval backbone with the stem it
    was trained with (read from the checkpoint's config), and a contradicting teacher_stem errors."""
    from fastdisco.config import Config, to_dict
    from fastdisco.errors import FastdiscoError
    from fastdisco.evaluation.backbone import load_backbone
    from fastdisco.models.teacher import load_teacher

    cfg = Config()
    cfg.model.student, cfg.model.stem, cfg.model.proj_hidden, cfg.model.proj_dim = "resnet18", "small", 16, 8
    s = build_student(cfg.model, "mocov2").eval()
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    torch.save({"format": "fastdisco-ckpt-v1", "student_name": "resnet18", "student": s.state_dict(),
                "config": to_dict(cfg), "step": 1, "epoch": 0}, ckpt)
    x = torch.randn(2, 3, 32, 32)
    t = load_teacher(ModelConfig(teacher="resnet18", teacher_ckpt=str(ckpt), teacher_format="fastdisco",
                                 teacher_bn="eval", teacher_proj_hidden=16))
    torch.testing.assert_close(t(x), s(x))
    lb = load_backbone(tmp_path)
    torch.testing.assert_close(lb.module(x), s.backbone(x))
    with pytest.raises(FastdiscoError, match="teacher_stem is 'default'"):
        load_teacher(ModelConfig(teacher="resnet18", teacher_ckpt=str(ckpt), teacher_format="fastdisco",
                                 teacher_stem="default", teacher_proj_hidden=16))
