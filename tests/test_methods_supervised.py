"""The `supervised` method: cross-entropy of the student's classifier against F.cross_entropy
written out by hand; it learns; bad labels are one-line errors; its checkpoint is an SSLD teacher."""
import sys
from pathlib import Path

import pytest
import torch

from fastdisco.config import Config, apply_overrides
from fastdisco.errors import FastdiscoError
from fastdisco.models.methods import build_method
from fastdisco.models.student import GroupedBatchNorm2d, build_student

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import TinyLoader  # noqa: E402


def _cfg(num_classes=4):
    cfg = Config()
    apply_overrides(cfg, {"model": {"student": "test_resnet", "num_classes": num_classes, "shuffle_bn_group": 8},
                          "method": {"name": "supervised"}})
    return cfg


def test_step_is_cross_entropy_of_the_classifier():
    torch.manual_seed(0)
    cfg = _cfg()
    student = build_student(cfg.model, "supervised")
    # keeps its classifier, no projection head, no grouped BN (one view, no positive pairs)
    assert isinstance(student.head, torch.nn.Identity) and student.backbone.num_classes == 4
    assert not any(isinstance(m, GroupedBatchNorm2d) for m in student.modules())
    m = build_method(cfg, student)
    batch = next(iter(TinyLoader(batch_size=8, num_views=1)))
    student.eval()  # same BN statistics for both forward passes
    loss, parts = m.step(batch)
    logits = student(batch.views[0]).double()
    ref = -(logits.log_softmax(1).gather(1, batch.labels[:, None])).mean()  # by hand, not F.cross_entropy
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    assert set(parts) == {"ce"}


def test_supervised_learns_tiny_set():
    torch.manual_seed(0)
    cfg = _cfg()
    student = build_student(cfg.model, "supervised")
    m = build_method(cfg, student)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    loader = TinyLoader(num_samples=32, batch_size=16, num_views=1, noise=0.05)
    first = last = None
    for epoch in range(15):
        loader.set_epoch(epoch)
        for batch in loader:
            loss, _ = m.step(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
            last = loss.item()
    assert last < 0.5 * first


def test_unlabeled_and_too_few_logits_are_errors():
    cfg = _cfg()
    m = build_method(cfg, build_student(cfg.model, "supervised"))
    batch = next(iter(TinyLoader(batch_size=4, num_views=1)))
    batch.labels = torch.full_like(batch.labels, -1)
    with pytest.raises(FastdiscoError, match="needs labels"):
        m.step(batch)
    cfg = _cfg(num_classes=2)
    m = build_method(cfg, build_student(cfg.model, "supervised"))
    batch = next(iter(TinyLoader(batch_size=4, num_views=1)))  # labels 0..3
    with pytest.raises(FastdiscoError, match="model.num_classes"):
        m.step(batch)


def test_checkpoint_is_a_logits_teacher(tmp_path):
    from fastdisco.models.teacher import load_teacher

    torch.manual_seed(0)
    cfg = _cfg()
    student = build_student(cfg.model, "supervised").eval()
    path = tmp_path / "last.pt"
    torch.save({"format": "fastdisco-ckpt-v1", "student_name": "test_resnet", "student": student.state_dict()}, path)
    apply_overrides(cfg, {"model": {"teacher": "test_resnet", "teacher_ckpt": str(path), "teacher_format": "fastdisco",
                                    "teacher_bn": "eval"}})
    teacher = load_teacher(cfg.model, output="logits")
    x = torch.randn(3, 3, 32, 32)
    # The teacher applies its own normalisation; with the loader's (ImageNet) stats it is the identity map.
    torch.testing.assert_close(teacher(x), student(x), rtol=1e-4, atol=1e-5)
