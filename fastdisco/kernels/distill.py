"""DisCo embedding distillation, fused: L2 normalisation, loss and its gradient in one pass.

Per row, with s_hat = s / max(|s|, eps) (exactly F.normalize) and r = s_hat - t_hat:

    loss = |r|^2                                  (= 2 - 2 cos(s, t) away from zero vectors)
    dloss/ds = (2 / max(|s|, eps)) * (r - [|s| > eps] s_hat (s_hat . r))
    dloss/dt = (2 / max(|t|, eps)) * (-r + [|t| > eps] t_hat (t_hat . r))

(the Jacobian of s -> s_hat is (I - s_hat s_hat^T) / |s|, or I / eps below eps). The loss is the
last node of the graph, so the gradient is written in the forward pass while the row is in
registers; backward only scales it by the upstream gradient of each row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdisco.errors import FastdiscoError

from ._runtime import check_runnable, kernel_dtype

EPS = 1e-12  # F.normalize's default
# A tile holds ROWS x BLOCK_D elements with BLOCK_D = next_pow2(D) (a whole row, so each row is
# read once); TILE_ELEMS = 4096 keeps the ~6 live fp32 tiles at <= 32 registers each per thread
# at 4 warps, and for D = 128 gives 32 rows per program.
TILE_ELEMS = 4096
MAX_D = 16384  # a whole row per tile: beyond this registers spill; use impl="torch"


@triton.jit
def _distill_kernel(S, T, LOSS, DS, DT, N, D, ss_n, ss_d, st_n, st_d, eps,
                    ROWS: tl.constexpr, BLOCK_D: tl.constexpr, GRAD_S: tl.constexpr, GRAD_T: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < N) & (cols[None, :] < D)
    r64 = rows[:, None].to(tl.int64)
    s = tl.load(S + r64 * ss_n + cols[None, :] * ss_d, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(T + r64 * st_n + cols[None, :] * st_d, mask=mask, other=0.0).to(tl.float32)
    ns = tl.sqrt(tl.sum(s * s, axis=1))
    nt = tl.sqrt(tl.sum(t * t, axis=1))
    ns_c = tl.maximum(ns, eps)
    nt_c = tl.maximum(nt, eps)
    sh = s / ns_c[:, None]
    th = t / nt_c[:, None]
    r = sh - th
    tl.store(LOSS + rows, tl.sum(r * r, axis=1), mask=rows < N)
    out = r64 * D + cols[None, :]  # gradients are written contiguous [N, D]
    if GRAD_S:
        proj = tl.where(ns > eps, tl.sum(sh * r, axis=1), 0.0)
        ds = (2.0 / ns_c)[:, None] * (r - sh * proj[:, None])
        tl.store(DS + out, ds.to(DS.dtype.element_ty), mask=mask)
    if GRAD_T:
        proj = tl.where(nt > eps, tl.sum(th * r, axis=1), 0.0)
        dt = (2.0 / nt_c)[:, None] * (th * proj[:, None] - r)
        tl.store(DT + out, dt.to(DT.dtype.element_ty), mask=mask)


def _launch(s: torch.Tensor, t: torch.Tensor, grad_s: bool, grad_t: bool):
    N, D = s.shape
    if D > MAX_D:
        raise FastdiscoError(f"embedding_distill_loss impl='triton' supports D <= {MAX_D}, got {D}; use impl='torch'")
    block_d = triton.next_power_of_2(D)
    rows = max(1, min(64, TILE_ELEMS // block_d))
    loss = torch.empty(N, device=s.device, dtype=torch.float32)
    ds = torch.empty(N, D, device=s.device, dtype=s.dtype) if grad_s else loss  # dummy pointer when unused
    dt = torch.empty(N, D, device=t.device, dtype=t.dtype) if grad_t else loss
    _distill_kernel[(triton.cdiv(N, rows),)](
        s, t, loss, ds, dt, N, D, s.stride(0), s.stride(1), t.stride(0), t.stride(1), EPS,
        ROWS=rows, BLOCK_D=block_d, GRAD_S=grad_s, GRAD_T=grad_t, num_warps=4 if block_d <= 2048 else 8)
    return loss, (ds if grad_s else None), (dt if grad_t else None)


class DistillRows(torch.autograd.Function):
    """Per-row |s_hat - t_hat|^2 [N] (fp32); gradients computed in forward."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        loss, ds, dt = _launch(s, t, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        ctx.save_for_backward(ds, dt)
        return loss

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        ds, dt = ctx.saved_tensors
        g = g.float()[:, None]
        return ((ds * g).to(ds.dtype) if ds is not None else None,
                (dt * g).to(dt.dtype) if dt is not None else None)


def embedding_distill_loss_triton(student: torch.Tensor, teacher: torch.Tensor,
                                  reduction: str = "mean") -> torch.Tensor:
    check_runnable(student)
    kd = kernel_dtype(student.dtype)
    per_row = DistillRows.apply(student.to(kd), teacher.to(kernel_dtype(teacher.dtype)))
    if student.dtype == torch.float64:
        per_row = per_row.double()
    return {"mean": per_row.mean, "sum": per_row.sum, "none": lambda: per_row}[reduction]()
