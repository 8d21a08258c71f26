"""SSLD logit distillation, fused: temperature softmax of both logits, loss and gradients in one
pass over each row (two passes when a row is wider than one tile).

With a = s / T, b = t / T, q = softmax(a), p = softmax(b), lq = log q, lp = log p:

  symmetric KL (MODE 0):  loss = 0.5 (KL(p||q) + KL(q||p)) = 0.5 sum_c (p_c - q_c)(lp_c - lq_c)
      dloss/da_j = 0.5 (q_j (lq_j - lp_j - KL(q||p) + 1) - p_j)
      dloss/db_j = 0.5 (p_j (lp_j - lq_j - KL(p||q) + 1) - q_j)
    (from dq_c/da_j = q_c (delta_cj - q_j), dlq_c/da_j = delta_cj - q_j and sum_c (p_c - q_c) = 0)
  soft cross-entropy (MODE 1):  loss = -sum_c p_c lq_c
      dloss/da_j = q_j - p_j,      dloss/db_j = -p_j (lq_j + loss)
  and d/ds = (1/T) d/da. No T^2 factor (SSLD uses T = 1).

The loss is the last node, so gradients are written in the forward pass (Liger-Kernel style);
backward only multiplies by the upstream gradient of each row. Wide rows (C > MAX_SINGLE_C) are
read twice: pass 1 keeps online maxima / sums, using sum_c (p_c - q_c)(lp_c - lq_c)
= E_p[b - a] + E_q[a - b] (the log-normalisers cancel), pass 2 writes the gradients.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import check_runnable, kernel_dtype

SYM_KL, SOFT_CE = 0, 1
# One row per program. Rows up to MAX_SINGLE_C = 4096 are held whole in registers (C = 1000 ->
# a 1024 tile, one read of each input); wider rows are swept in CHUNK_C tiles so the ~8 live fp32
# vectors stay within registers at 8 warps.
MAX_SINGLE_C = 4096
CHUNK_C = 2048


@triton.jit
def _row_grads(a, b, valid, lse_a, lse_b, kl_ts, kl_st, loss, inv_t, MODE: tl.constexpr):
    lq = tl.where(valid, a - lse_a, 0.0)
    lp = tl.where(valid, b - lse_b, 0.0)
    q = tl.where(valid, tl.exp(lq), 0.0)
    p = tl.where(valid, tl.exp(lp), 0.0)
    if MODE == 0:
        da = 0.5 * (q * (lq - lp - kl_st + 1.0) - p)
        db = 0.5 * (p * (lp - lq - kl_ts + 1.0) - q)
    else:
        da = q - p
        db = -p * (lq + loss)
    return da * inv_t, db * inv_t


@triton.jit
def _kl_kernel(S, T, LOSS, DS, DT, C, ss_n, ss_c, st_n, st_c, inv_t,
               BLOCK_C: tl.constexpr, SINGLE: tl.constexpr, MODE: tl.constexpr,
               GRAD_S: tl.constexpr, GRAD_T: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    S += row * ss_n
    T += row * st_n
    DS += row * C  # gradients are written contiguous [N, C]
    DT += row * C
    if SINGLE:
        cols = tl.arange(0, BLOCK_C)
        valid = cols < C
        a = tl.load(S + cols * ss_c, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
        b = tl.load(T + cols * st_c, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
        ma = tl.max(a, axis=0)
        mb = tl.max(b, axis=0)
        lse_a = ma + tl.log(tl.sum(tl.exp(a - ma), axis=0))
        lse_b = mb + tl.log(tl.sum(tl.exp(b - mb), axis=0))
        lq = tl.where(valid, a - lse_a, 0.0)
        lp = tl.where(valid, b - lse_b, 0.0)
        q = tl.where(valid, tl.exp(lq), 0.0)
        p = tl.where(valid, tl.exp(lp), 0.0)
        kl_ts = tl.sum(p * (lp - lq), axis=0)
        kl_st = tl.sum(q * (lq - lp), axis=0)
        if MODE == 0:
            loss = 0.5 * (kl_ts + kl_st)
        else:
            loss = -tl.sum(p * lq, axis=0)
        tl.store(LOSS + row, loss)
        if GRAD_S or GRAD_T:
            da, db = _row_grads(a, b, valid, lse_a, lse_b, kl_ts, kl_st, loss, inv_t, MODE)
            if GRAD_S:
                tl.store(DS + cols, da.to(DS.dtype.element_ty), mask=valid)
            if GRAD_T:
                tl.store(DT + cols, db.to(DT.dtype.element_ty), mask=valid)
    else:
        # pass 1: online max / normaliser of a and b, and u_b = sum e^(b-m_b)(b-a),
        # u_a = sum e^(a-m_a)(a-b), w = sum e^(b-m_b) a, all rescaled when a maximum grows
        ma = float("-inf")
        mb = float("-inf")
        za = 0.0
        zb = 0.0
        ua = 0.0
        ub = 0.0
        w = 0.0
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            valid = cols < C
            a = tl.load(S + cols * ss_c, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
            b = tl.load(T + cols * st_c, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
            ma_new = tl.maximum(ma, tl.max(a, axis=0))
            mb_new = tl.maximum(mb, tl.max(b, axis=0))
            ea = tl.exp(a - ma_new)  # 0 on padding
            eb = tl.exp(b - mb_new)
            a0 = tl.where(valid, a, 0.0)  # padding is -inf: keep it out of differences
            diff = a0 - tl.where(valid, b, 0.0)
            alpha_a = tl.exp(ma - ma_new)
            alpha_b = tl.exp(mb - mb_new)
            za = za * alpha_a + tl.sum(ea, axis=0)
            zb = zb * alpha_b + tl.sum(eb, axis=0)
            ua = ua * alpha_a + tl.sum(ea * diff, axis=0)
            ub = ub * alpha_b - tl.sum(eb * diff, axis=0)
            w = w * alpha_b + tl.sum(eb * a0, axis=0)
            ma = ma_new
            mb = mb_new
        lse_a = ma + tl.log(za)
        lse_b = mb + tl.log(zb)
        kl_ts = ub / zb - (lse_b - lse_a)
        kl_st = ua / za - (lse_a - lse_b)
        if MODE == 0:
            loss = 0.5 * (ub / zb + ua / za)
        else:
            loss = lse_a - w / zb
        tl.store(LOSS + row, loss)
        if GRAD_S or GRAD_T:
            for c0 in range(0, C, BLOCK_C):  # pass 2: gradients
                cols = c0 + tl.arange(0, BLOCK_C)
                valid = cols < C
                a = tl.load(S + cols * ss_c, mask=valid, other=0.0).to(tl.float32) * inv_t
                b = tl.load(T + cols * st_c, mask=valid, other=0.0).to(tl.float32) * inv_t
                da, db = _row_grads(a, b, valid, lse_a, lse_b, kl_ts, kl_st, loss, inv_t, MODE)
                if GRAD_S:
                    tl.store(DS + cols, da.to(DS.dtype.element_ty), mask=valid)
                if GRAD_T:
                    tl.store(DT + cols, db.to(DT.dtype.element_ty), mask=valid)


def _launch(s: torch.Tensor, t: torch.Tensor, temperature: float, mode: int, grad_s: bool, grad_t: bool,
            max_single_c: int | None = None, chunk_c: int | None = None):
    """Per-row loss [N] (fp32) and, if asked, the per-row gradients (contiguous, input dtype).
    The tile limits default to the module constants, read at call time (tests shrink them)."""
    N, C = s.shape
    block_c = triton.next_power_of_2(C)
    single = block_c <= (max_single_c or MAX_SINGLE_C)
    if not single:
        block_c = chunk_c or CHUNK_C
    loss = torch.empty(N, device=s.device, dtype=torch.float32)
    ds = torch.empty(N, C, device=s.device, dtype=s.dtype) if grad_s else loss  # dummy pointer when unused
    dt = torch.empty(N, C, device=t.device, dtype=t.dtype) if grad_t else loss
    _kl_kernel[(N,)](s, t, loss, ds, dt, C, s.stride(0), s.stride(1), t.stride(0), t.stride(1),
                     1.0 / temperature, BLOCK_C=block_c, SINGLE=single, MODE=mode,
                     GRAD_S=grad_s, GRAD_T=grad_t, num_warps=4 if block_c <= 1024 else 8)
    return loss, (ds if grad_s else None), (dt if grad_t else None)


class LogitRows(torch.autograd.Function):
    """Per-row symmetric KL / soft CE [N] (fp32); gradients computed in forward."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, temperature: float, mode: int) -> torch.Tensor:
        loss, ds, dt = _launch(s, t, temperature, mode, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        ctx.save_for_backward(ds, dt)
        return loss

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        ds, dt = ctx.saved_tensors
        g = g.float()[:, None]
        return ((ds * g).to(ds.dtype) if ds is not None else None,
                (dt * g).to(dt.dtype) if dt is not None else None, None, None)


def _batch_mean(s, t, temperature, mode):
    check_runnable(s)
    per_row = LogitRows.apply(s.to(kernel_dtype(s.dtype)), t.to(kernel_dtype(t.dtype)), temperature, mode)
    loss = per_row.mean()
    return loss.double() if s.dtype == torch.float64 else loss


def symmetric_kl_loss_triton(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    return _batch_mean(student_logits, teacher_logits, temperature, SYM_KL)


def soft_ce_loss_triton(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    return _batch_mean(student_logits, teacher_logits, temperature, SOFT_CE)
