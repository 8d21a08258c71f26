"""SSLD students keep their classifier: evaluate it directly.

- top-1 / top-5 of the student's own logits against the labels, where labels exist (>= 0);
- agreement: how often the student's top-1 class equals the teacher's top-1 class (all samples,
  labelled or not), the quantity SSLD's label-free distillation optimises for. The teacher runs
  with its stored BN statistics (eval mode) here, even when it was built for training with BN in
  train mode (`model.teacher_bn: train`, which `Teacher.eval()` keeps): an evaluation number must
  not depend on which images share a batch.
Counts are accumulated on the device and read once at the end.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn

from fastdisco.evaluation.features import _autocast, _bar, prepare_input, unpack_batch
from fastdisco.evaluation.linear import topk_correct


@torch.inference_mode()
def ssld_eval(student: nn.Module, loader: Iterable, *, teacher: nn.Module | None = None,
              device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None,
              progress: bool = False) -> dict:
    """{"top1", "top5" (None without labels), "agreement_top1" (None without teacher), counts}."""
    if getattr(student, "num_classes", 1) == 0:
        raise ValueError("the student has no classifier (num_classes=0): use the linear probe or kNN")
    if device is None:
        device = next(student.parameters()).device
    device = torch.device(device)
    student.eval()
    with contextlib.ExitStack() as stack:
        if teacher is not None:
            teacher.eval()
            stack.enter_context(bn_eval(teacher))
        return _run(student, loader, teacher, device, amp_dtype, progress)


@contextlib.contextmanager
def bn_eval(module: nn.Module):
    """Every BatchNorm of `module` in eval mode (stored statistics) inside the block, whatever
    `module.train()` / `.eval()` do (a fastdisco Teacher keeps its configured BN mode), restored after."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in bns]
    for m in bns:
        m.train(False)
    try:
        yield module
    finally:
        for m, mode in zip(bns, modes):
            m.train(mode)


def _run(student: nn.Module, loader: Iterable, teacher: nn.Module | None, device: torch.device,
         amp_dtype: torch.dtype | None, progress: bool) -> dict:
    correct = torch.zeros(2, dtype=torch.long, device=device)
    labelled = torch.zeros((), dtype=torch.long, device=device)
    agree = torch.zeros((), dtype=torch.long, device=device)
    total = torch.zeros((), dtype=torch.long, device=device)
    for batch in _bar(loader, progress, "ssld eval"):
        x, y, _, valid = unpack_batch(batch)
        x, dtype = prepare_input(x, device, amp_dtype)
        y = y.to(device, non_blocking=True).long()
        valid = torch.ones_like(y, dtype=torch.bool) if valid is None else valid.to(device).bool()
        with _autocast(device, dtype):
            s = student(x).float()
            t = teacher(x).float() if teacher is not None else None
        has = (y >= 0) & valid
        # Masked rows get label -2, which no top-k index equals, so they never count as hits.
        correct += topk_correct(s, torch.where(has, y, torch.full_like(y, -2)))
        labelled += has.sum()
        if t is not None:
            if t.shape[1] != s.shape[1]:
                raise ValueError(f"teacher gives {t.shape[1]} classes, student {s.shape[1]}")
            agree += ((s.argmax(1) == t.argmax(1)) & valid).sum()
        total += valid.sum()
    n_lab, total = int(labelled), int(total)
    c = correct.tolist()
    return {
        "top1": 100.0 * c[0] / n_lab if n_lab else None,
        "top5": 100.0 * c[1] / n_lab if n_lab else None,
        "agreement_top1": 100.0 * int(agree) / total if teacher is not None and total else None,
        "num_samples": total, "num_labelled": n_lab,
    }
