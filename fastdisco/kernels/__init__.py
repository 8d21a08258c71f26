"""Fused Triton losses of DisCo and SSLD, each beside its plain-PyTorch reference.

    from fastdisco.kernels import infonce_loss, embedding_distill_loss, symmetric_kl_loss, soft_ce_loss

Every function takes impl="auto" | "torch" | "triton". Triton is imported only when a kernel runs.
"""
from .api import embedding_distill_loss, infonce_loss, soft_ce_loss, symmetric_kl_loss
from .reference import (
    embedding_distill_loss_reference,
    infonce_loss_reference,
    soft_ce_loss_reference,
    symmetric_kl_loss_reference,
)

__all__ = [
    "infonce_loss", "embedding_distill_loss", "symmetric_kl_loss", "soft_ce_loss",
    "infonce_loss_reference", "embedding_distill_loss_reference", "symmetric_kl_loss_reference",
    "soft_ce_loss_reference",
]
