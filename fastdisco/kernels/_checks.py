"""Input validation shared by the references and the kernels: bad input is a one-line
FastdiscoError that names the argument, never a deep Triton / shape traceback."""
from __future__ import annotations

import torch

from fastdisco.errors import FastdiscoError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
IMPLS = ("auto", "torch", "triton")
REDUCTIONS = ("mean", "sum", "none")


def _check_float(name: str, x: torch.Tensor, ndim: int = 2) -> None:
    if not isinstance(x, torch.Tensor):
        raise FastdiscoError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise FastdiscoError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise FastdiscoError(f"{name} must be float32/float16/bfloat16, got {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise FastdiscoError(f"{name} must be non-empty, got shape {tuple(x.shape)}")


def _check_temperature(temperature: float) -> None:
    if not float(temperature) > 0:
        raise FastdiscoError(f"temperature must be > 0, got {temperature}")


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise FastdiscoError(f"impl must be one of {IMPLS}, got {impl!r}")


def check_infonce(q, k, queue, temperature) -> None:
    _check_float("q", q)
    _check_float("k", k)
    if q.shape != k.shape:
        raise FastdiscoError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if queue is not None:
        _check_float("queue", queue)
        if queue.shape[1] != q.shape[1]:
            raise FastdiscoError(f"queue must be [K, {q.shape[1]}], got {tuple(queue.shape)}"
                                 " (a MoCo [D, K] buffer is passed as queue.t())")
        if queue.device != q.device:
            raise FastdiscoError(f"queue is on {queue.device} but q is on {q.device}")
    if k.device != q.device:
        raise FastdiscoError(f"k is on {k.device} but q is on {q.device}")
    _check_temperature(temperature)


def check_distill(student, teacher, reduction) -> None:
    _check_float("student", student)
    _check_float("teacher", teacher)
    if student.shape != teacher.shape:
        raise FastdiscoError(f"student and teacher must have the same shape, got "
                             f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.device != teacher.device:
        raise FastdiscoError(f"student is on {student.device} but teacher is on {teacher.device}")
    if reduction not in REDUCTIONS:
        raise FastdiscoError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_logits(student_logits, teacher_logits, temperature) -> None:
    _check_float("student_logits", student_logits)
    _check_float("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise FastdiscoError(f"student_logits and teacher_logits must have the same shape, got "
                             f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if student_logits.device != teacher_logits.device:
        raise FastdiscoError(f"student_logits is on {student_logits.device} but teacher_logits is on "
                             f"{teacher_logits.device}")
    _check_temperature(temperature)
