"""The DisCo step's batched views and the teacher's BN: one batched forward of both views equals
one forward per view (loss, gradients, running statistics); the teacher's train-mode BN is
grouped per view like the student's and leaves its state untouched; teacher_bn eval folds
conv -> BN without changing outputs; bf16 teacher weights only under CUDA bf16 autocast."""
import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from fastdisco.config import Config, ModelConfig, apply_overrides
from fastdisco.models.fold_bn import fold_conv_bn
from fastdisco.models.grouped_bn import GroupedBatchNorm1d, GroupedBatchNorm2d, batched_views
from fastdisco.models.methods import build_method
from fastdisco.models.student import build_student
from fastdisco.models.teacher import load_teacher, teacher_dtype

sys.path.insert(0, str(Path(__file__).parent))
from test_teacher import ARCH, IMNET, Source, _mocov2, _swav  # noqa: E402
from train_utils import TinyLoader  # noqa: E402


def _teacher_cfg(path, **kw) -> ModelConfig:
    return ModelConfig(teacher=ARCH, teacher_ckpt=str(path), teacher_proj_hidden=64, **IMNET, **kw)


def _views(b, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 32, 32, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
            for _ in range(2)]


def test_disco_batched_step_equals_one_forward_per_view(tmp_path):
    """Student (shuffle-BN groups of 4) and teacher (train BN, groups of 4) each take [x0; x1] in
    one forward; a copy of the method forced to one forward per view gives the same loss, parts,
    student gradients, BN running statistics, keys and queue (float64, tight tolerance)."""
    torch.save(_mocov2(Source("moco")), tmp_path / "t.pth")
    teacher = load_teacher(_teacher_cfg(tmp_path / "t.pth", teacher_bn="train", teacher_bn_group=4)).double()
    cfg = Config()
    apply_overrides(cfg, {"model": {"student": "test_resnet", "proj_hidden": 32, "proj_dim": 16, "shuffle_bn_group": 4},
                          "method": {"name": "disco", "queue_size": 32, "loss_impl": "torch"}})
    torch.manual_seed(0)
    batched = build_method(cfg, build_student(cfg.model, "disco"), teacher).double()
    batched.queue.float()  # the queue stores fp32 keys whatever the encoders compute in
    separate = copy.deepcopy(batched)
    separate.teacher = teacher
    assert batched.batch_student_views and batched.batch_teacher_views  # grouped BN everywhere
    separate.batch_student_views = separate.batch_teacher_views = False
    batch = next(iter(TinyLoader(batch_size=16)))
    batch.views = [v.double() for v in batch.views]
    results = []
    for m in (batched, separate):
        m.seed_rng(7, torch.device("cpu"))
        loss, parts = m.step(batch)
        loss.backward()
        results.append((loss.detach(), parts, {n: p.grad for n, p in m.student.named_parameters()},
                        m.student.state_dict(), m.key_encoder.state_dict(), m.queue.keys.clone()))
    (la, pa, ga, sa, ka, qa), (lb, pb, gb, sb, kb, qb) = results
    tol = dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(la, lb, **tol)
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], **tol)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], **tol)
    for k in sa:  # running stats: updated once per view, in order, in both
        torch.testing.assert_close(sa[k], sb[k], **tol)
    assert int(sa["backbone.bn1.num_batches_tracked"]) == 2
    for k in ka:
        torch.testing.assert_close(ka[k], kb[k], **tol)
    torch.testing.assert_close(qa, qb, **tol)
    # a student with plain training-mode BN would mix the views in one forward: it runs per view
    plain = build_method(cfg, build_student(ModelConfig(student="test_resnet", proj_hidden=32, proj_dim=16,
                                                        shuffle_bn_group=0), "disco"), teacher).double()
    assert not plain.batch_student_views


def test_teacher_bn_grouped_per_view_and_state_untouched(tmp_path):
    """Teacher with a Linear-BN1d-ReLU-Linear head, teacher_bn train, groups of 4: the batched
    forward of two views of 8 equals the source model (train-mode BN) run on each group of each
    view on its own (group g of a view = its samples j with j % 2 == g), backbone and head BN alike."""
    src = Source("bn")
    torch.save(_swav(src), tmp_path / "s.pth")
    t = load_teacher(_teacher_cfg(tmp_path / "s.pth", teacher_bn="train", teacher_bn_group=4)).double()
    assert all(isinstance(m, (GroupedBatchNorm2d, GroupedBatchNorm1d))
               for m in t.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert isinstance(t.head[1], GroupedBatchNorm1d)
    src = src.double().train()
    x0, x1 = _views(8, 0)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    with batched_views(2):
        out = t(torch.cat([x0, x1]))
    expect = torch.empty_like(out)
    with torch.no_grad():
        for v, x in enumerate((x0, x1)):
            for g in range(2):
                expect[v * 8:(v + 1) * 8][g::2] = src(x[g::2])
    torch.testing.assert_close(out, expect, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(t(x0), out[:8], rtol=1e-9, atol=1e-12)  # = one forward per view
    after = t.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "running stats must stay as loaded"
    # teacher_bn_group 0: each view's whole batch
    t0 = load_teacher(_teacher_cfg(tmp_path / "s.pth", teacher_bn="train", teacher_bn_group=0)).double()
    with batched_views(2):
        out0 = t0(torch.cat([x0, x1]))
    with torch.no_grad():
        torch.testing.assert_close(out0, torch.cat([src(x0), src(x1)]), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(out0, out)


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet"])
def test_folded_teacher_equals_unfolded_eval(tmp_path, arch):
    import timm

    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False, num_classes=0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "t.pth")
    cfg = ModelConfig(teacher=arch, teacher_ckpt=str(tmp_path / "t.pth"), teacher_format="timm", teacher_bn="eval",
                      **IMNET)
    plain = load_teacher(cfg)
    folded = load_teacher(cfg, fold_bn=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.backbone.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.backbone.modules())  # every pair folded
    x = torch.randn(3, 3, 48, 48)
    torch.testing.assert_close(folded(x), plain(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(folded(x), net.eval()(x), rtol=1e-4, atol=1e-5)


def test_fold_refuses_a_conv_output_read_twice():
    class Skip(nn.Module):  # conv output feeds the BN and the residual: folding would change it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    net = Skip().eval()
    with torch.no_grad():
        net.bn.running_mean.fill_(0.5), net.bn.running_var.fill_(3.0)
    out, n = fold_conv_bn(net, torch.randn(2, 3, 8, 8))
    assert out is net and n == 0
    ok, n = fold_conv_bn(nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)).eval(), torch.randn(2, 3, 8, 8))
    assert n == 1 and isinstance(ok[1], nn.Identity)


def test_teacher_dtype_and_build_models(tmp_path):
    assert teacher_dtype("bf16", "cuda") == torch.bfloat16
    assert teacher_dtype("bf16", torch.device("cpu")) is None and teacher_dtype("fp32", "cuda") is None
    from fastdisco.engine.trainer import build_models
    from fastdisco.models.methods import METHODS

    torch.save(_mocov2(Source("moco")), tmp_path / "t.pth")
    cfg = Config()
    apply_overrides(cfg, {"model": {"student": "test_resnet", "proj_hidden": 32, "proj_dim": 16, "teacher": ARCH,
                                    "teacher_ckpt": str(tmp_path / "t.pth"), "teacher_proj_hidden": 64,
                                    "teacher_bn": "eval"},
                          "method": {"name": "disco", "queue_size": 32}, "train": {"precision": "bf16"}})
    _, teacher, method = build_models(cfg, METHODS["disco"], device="cpu")
    assert all(p.dtype == torch.float32 for p in teacher.parameters())  # CPU: fp32 stays
    assert not any(isinstance(m, nn.BatchNorm2d) for m in teacher.backbone.modules())  # folded for training
    assert method.batch_teacher_views
