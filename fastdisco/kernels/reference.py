"""Plain-PyTorch references of the fastdisco losses: the source of truth the Triton kernels are
tested against. Written straight from the papers / official code, everything in float32 (or
float64 when given float64), nothing clever."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_distill, check_infonce, check_logits


def infonce_loss_reference(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None,
                           temperature: float = 0.2) -> torch.Tensor:
    """MoCo InfoNCE. q, k: raw [N, D] (L2-normalised here); queue: [K, D] normalised keys (no
    gradient) or None for in-batch negatives (logits q k^T / T, positives on the diagonal)."""
    check_infonce(q, k, queue, temperature)
    ct = torch.promote_types(q.dtype, torch.float32)
    qn = F.normalize(q.to(ct), dim=1)
    kn = F.normalize(k.to(ct), dim=1)
    if queue is None:
        logits = qn @ kn.t() / temperature
        labels = torch.arange(q.shape[0], device=q.device)
    else:
        l_pos = (qn * kn).sum(dim=1, keepdim=True)
        l_neg = qn @ queue.detach().to(ct).t()
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def embedding_distill_loss_reference(student: torch.Tensor, teacher: torch.Tensor,
                                     reduction: str = "mean") -> torch.Tensor:
    """DisCo embedding distillation: per row ||s/|s| - t/|t|||^2 (= 2 - 2 cos), mean / sum / none."""
    check_distill(student, teacher, reduction)
    ct = torch.promote_types(student.dtype, torch.float32)
    s = F.normalize(student.to(ct), dim=1)
    t = F.normalize(teacher.to(ct), dim=1)
    per_row = ((s - t) ** 2).sum(dim=1)
    return {"mean": per_row.mean, "sum": per_row.sum, "none": lambda: per_row}[reduction]()


def symmetric_kl_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                temperature: float = 1.0) -> torch.Tensor:
    """SSLD "JS" loss: per row 0.5 (KL(t||s) + KL(s||t)) of softmax(logits / T), batch mean.
    No T^2 factor (SSLD uses T = 1)."""
    check_logits(student_logits, teacher_logits, temperature)
    ct = torch.promote_types(student_logits.dtype, torch.float32)
    ls = F.log_softmax(student_logits.to(ct) / temperature, dim=1)
    lt = F.log_softmax(teacher_logits.to(ct) / temperature, dim=1)
    kl_ts = (lt.exp() * (lt - ls)).sum(dim=1)
    kl_st = (ls.exp() * (ls - lt)).sum(dim=1)
    return (0.5 * (kl_ts + kl_st)).mean()


def soft_ce_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of softmax(student / T) against the target softmax(teacher / T), batch mean.
    The gradient also reaches the teacher logits when they require it."""
    check_logits(student_logits, teacher_logits, temperature)
    ct = torch.promote_types(student_logits.dtype, torch.float32)
    ls = F.log_softmax(student_logits.to(ct) / temperature, dim=1)
    pt = F.softmax(teacher_logits.to(ct) / temperature, dim=1)
    return -(pt * ls).sum(dim=1).mean()
