"""The public loss functions: validate, then dispatch to the Triton kernel or the reference.

impl="auto" takes the kernel on CUDA tensors and the reference otherwise; impl="triton" also runs
CPU tensors when TRITON_INTERPRET=1 was set before the first import (tests do this)."""
from __future__ import annotations

import importlib.util

import torch

from fastdisco.errors import require

from . import reference
from ._checks import check_distill, check_impl, check_infonce, check_logits


def _use_triton(impl: str, x: torch.Tensor) -> bool:
    check_impl(impl)
    if impl == "triton":
        require("triton", "impl='triton'", "install triton (Linux) or use impl='torch'")
        return True
    # auto: the kernel on CUDA tensors when triton is installed, the reference otherwise
    return impl == "auto" and x.device.type == "cuda" and importlib.util.find_spec("triton") is not None


def infonce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None,
                 temperature: float = 0.2, impl: str = "auto") -> torch.Tensor:
    """Mean InfoNCE of raw embeddings q, k [N, D] (L2-normalised inside) against the positive k
    and a queue [K, D] of normalised keys (never gets a gradient), or, when queue is None,
    in-batch negatives (logits q k^T / T, positives on the diagonal). Scalar fp32."""
    check_infonce(q, k, queue, temperature)
    if _use_triton(impl, q):
        from .infonce import infonce_loss_triton

        return infonce_loss_triton(q, k, queue, float(temperature))
    return reference.infonce_loss_reference(q, k, queue, temperature)


def embedding_distill_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "mean",
                           impl: str = "auto") -> torch.Tensor:
    """Per-row ||s/|s| - t/|t|||^2 = 2 - 2 cos(s, t); reduction "mean", "sum" (official DisCo
    scaling) or "none" ([N])."""
    check_distill(student, teacher, reduction)
    if _use_triton(impl, student):
        from .distill import embedding_distill_loss_triton

        return embedding_distill_loss_triton(student, teacher, reduction)
    return reference.embedding_distill_loss_reference(student, teacher, reduction)


def symmetric_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Batch mean of 0.5 (KL(t||s) + KL(s||t)) of softmax(logits / T) (SSLD)."""
    check_logits(student_logits, teacher_logits, temperature)
    if _use_triton(impl, student_logits):
        from .kl import symmetric_kl_loss_triton

        return symmetric_kl_loss_triton(student_logits, teacher_logits, float(temperature))
    return reference.symmetric_kl_loss_reference(student_logits, teacher_logits, temperature)


def soft_ce_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 temperature: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Batch mean of the cross-entropy of softmax(student / T) to the target softmax(teacher / T)."""
    check_logits(student_logits, teacher_logits, temperature)
    if _use_triton(impl, student_logits):
        from .kl import soft_ce_loss_triton

        return soft_ce_loss_triton(student_logits, teacher_logits, float(temperature))
    return reference.soft_ce_loss_reference(student_logits, teacher_logits, temperature)
