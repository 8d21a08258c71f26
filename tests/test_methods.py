"""Methods against the reference losses; the teacher gets no gradient; optimizer pieces."""
import sys
from pathlib import Path

import torch
import torch.nn as nn

from fastdisco.config import Config, OptimConfig, apply_overrides
from fastdisco.kernels import embedding_distill_loss_reference, infonce_loss_reference, soft_ce_loss_reference, \
    symmetric_kl_loss_reference
from fastdisco.models.methods import OFFICIAL_DISCO_PER_GPU_BATCH, build_method
from fastdisco.models.student import build_student
from fastdisco.engine.optim import LARS, build_optimizer, cosine_schedule, param_groups

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import TinyLoader, TinyTeacher  # noqa: E402


def _cfg(method, **over):
    cfg = Config()
    apply_overrides(cfg, {"model": {"student": "test_resnet", "proj_hidden": 32, "proj_dim": 128, "num_classes": 10,
                                    "shuffle_bn_group": 0},
                          "method": {"name": method, "queue_size": 16, "loss_impl": "torch", **over}})
    return cfg


def test_disco_step_matches_reference_and_teacher_gets_no_grad():
    torch.manual_seed(0)
    cfg = _cfg("disco", distill_reduction="sum")
    student, teacher = build_student(cfg.model, "disco"), TinyTeacher(128)
    m = build_method(cfg, student, teacher)
    batch = next(iter(TinyLoader(batch_size=4)))
    queue = m.queue.keys.clone()
    loss, parts = m.step(batch)
    loss.backward()
    assert set(parts) == {"infonce", "distill_v0", "distill_v1"}
    s0, s1 = student(batch.views[0]), student(batch.views[1])
    t0, t1 = teacher(batch.views[0]), teacher(batch.views[1])
    k = m.key_encoder(batch.views[1])
    nce = infonce_loss_reference(s0, k, queue, 0.2)
    d0, d1 = embedding_distill_loss_reference(s0, t0), embedding_distill_loss_reference(s1, t1)
    torch.testing.assert_close(parts["infonce"], nce.detach())
    torch.testing.assert_close(loss, nce + OFFICIAL_DISCO_PER_GPU_BATCH * (d0 + d1))
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in m.key_encoder.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert "teacher" not in dict(m.named_children())  # method.train() must not touch it
    torch.testing.assert_close(m.queue.keys[:4], torch.nn.functional.normalize(k.detach(), dim=1))


def test_ssld_symkl_and_soft_ce():
    torch.manual_seed(0)
    for kind, ref in (("symkl", symmetric_kl_loss_reference), ("soft_ce", soft_ce_loss_reference)):
        cfg = _cfg("ssld", ssld_loss=kind)
        student, teacher = build_student(cfg.model, "ssld"), TinyTeacher(10)
        m = build_method(cfg, student, teacher)
        batch = next(iter(TinyLoader(batch_size=4, num_views=1)))
        loss, parts = m.step(batch)
        torch.testing.assert_close(loss, ref(student(batch.views[0]), teacher(batch.views[0])))
        assert list(parts) == [kind]


def test_param_groups_and_schedule():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(net, 1e-4)
    assert {p.ndim for p in decay["params"]} == {4, 2} and {p.ndim for p in no_decay["params"]} == {1}
    assert no_decay["weight_decay"] == 0.0
    lr = cosine_schedule(1.0, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    torch.testing.assert_close(lr[:3], torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64))
    assert abs(float(lr[-1]) - (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 7 / 8))))) < 1e-6
    assert all(lr[i] >= lr[i + 1] for i in range(1, 9))


def test_optimizers_skip_on_found_inf():
    for name in ("sgd", "adamw", "lars"):
        p = nn.Parameter(torch.ones(4, 4))
        opt = build_optimizer(OptimConfig(name=name), nn.ParameterList([p]), torch.device("cpu"), lr=0.1)
        p.grad = torch.full_like(p, float("nan"))
        opt.found_inf = torch.tensor(1.0)
        opt.step()
        assert torch.equal(p.detach(), torch.ones(4, 4)), name
        p.grad = torch.ones_like(p)
        opt.found_inf = torch.tensor(0.0)
        opt.step()
        assert torch.isfinite(p).all() and (p < 1).all(), name
    assert isinstance(opt, LARS)
