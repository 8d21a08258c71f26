"""Normalised InfoNCE (MoCo / in-batch) without materialising the N x (K+1) logits.

The heavy core is one op, the row log-sum-exp of a scaled similarity matrix,

    lse_i = log sum_j exp(c * q_i . b_j),     c = 1 / T,   q: [N, D],  b: [K, D]

computed FlashAttention style: tiles of S = q b^T live only in registers, a running max m and
sum l give lse in one sweep over b (split over programs along K so that small N still fills
the GPU; the few partial lse per row are combined with a logsumexp in PyTorch). Its gradient,
with g_i = dLoss/dlse_i and p_ij = exp(c q_i . b_j - lse_i) (the softmax, recomputed tile by
tile from the saved lse, never stored):

    dq_i = c * sum_j g_i p_ij b_j          (kernel _dq_kernel, loop over K)
    db_j = c * sum_i g_i p_ij q_i          (kernel _db_kernel, loop over N; in-batch mode only)

Everything else is cheap O(N D) glue left to autograd (STYLE.md item 4): L2 normalisation, the
positive logit pos_i = q_i . k_i / T, and the loss
    with a queue:  loss_i = logaddexp(pos_i, lse(q_i, queue)) - pos_i    (positive at index 0)
    in-batch:      loss_i = lse(q_i, k) - pos_i                          (positive on the diagonal)
Extra memory: lse [N], partial lse [splits, N] and partial dq [splits, N, D] with
splits * ceil(N / BLOCK_N) ~ 2 x SMs, so O(N + tiles), independent of K.
Scores are kept in base 2 (exp2/log2 with c*log2(e) folded into the scale): cheaper on GPUs.
Pointer offsets are int64: K * stride overflows int32 from K * D > 2^31.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._runtime import check_runnable, dot_precision, kernel_dtype, split

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# BLOCK_N x BLOCK_K = 64 x 64 score tile: 32 fp32 registers per thread at 4 warps, leaves room
# for the q tile (64 x D, D <= 128 in registers); the FlashAttention-2 size for head dim <= 128.
# Untuned: no GPU was available when this was written (see benchmarks/bench_losses.py).
BLOCK_N = 64
BLOCK_K = 64
# D is reduced in chunks of at most MAX_BLOCK_D so a q tile never exceeds 64 x 128 x 4 B; when
# D fits in one chunk (ONE_D) the q tile is loaded once per program and reused for every K tile.
MAX_BLOCK_D = 128
NUM_WARPS = 4
# fp32 tiles take twice the shared memory per pipeline stage (up to 131 KB at 3 stages, compiled
# for sm_90 by aot_check.py): 2 stages keep fp32 at <= 80 KB, inside ~100 KB GPUs; 16-bit inputs
# use 3 (33-50 KB).
NUM_STAGES = {torch.float32: 2}


@triton.jit
def _load_tile(ptr, rows, cols, n_rows, n_cols, stride_r, stride_c):
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None].to(tl.int64) * stride_r + cols[None, :].to(tl.int64) * stride_c,
                   mask=mask, other=0.0)


@triton.jit
def _scores(A, B, rows_a, rows_b, NA, NB, D, sa_r, sa_d, sb_r, sb_d,
            BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    """S = A[rows_a] @ B[rows_b]^T, reduced over D in BLOCK_D chunks, fp32 accumulation."""
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        a = _load_tile(A, rows_a, cols, NA, D, sa_r, sa_d)
        b = _load_tile(B, rows_b, cols, NB, D, sb_r, sb_d)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC)
    return acc


@triton.jit
def _lse_fwd_kernel(Q, B, PART, N, K, D, sq_n, sq_d, sb_k, sb_d, scale_log2, tiles_per_split,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                    ONE_D: tl.constexpr, PREC: tl.constexpr):
    """PART[s, i] = log2 sum_{j in split s} 2^(scale_log2 * q_i . b_j) (online max / sum)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_N], dtype=tl.float32)
    cols_d = tl.arange(0, BLOCK_D)
    if ONE_D:
        q = _load_tile(Q, rows, cols_d, N, D, sq_n, sq_d)
    k0 = pid_s * tiles_per_split * BLOCK_K
    for t in range(0, tiles_per_split):
        cols_k = k0 + t * BLOCK_K + tl.arange(0, BLOCK_K)
        if ONE_D:
            b = _load_tile(B, cols_k, cols_d, K, D, sb_k, sb_d)
            s = tl.dot(q, tl.trans(b), input_precision=PREC)
        else:
            s = _scores(Q, B, rows, cols_k, N, K, D, sq_n, sq_d, sb_k, sb_d, BLOCK_N, BLOCK_K, BLOCK_D, PREC)
        s = tl.where(cols_k[None, :] < K, s * scale_log2, float("-inf"))
        # every split starts with at least one valid column, so m is finite after the first tile
        m_new = tl.maximum(m, tl.max(s, axis=1))
        l = l * tl.exp2(m - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m = m_new
    tl.store(PART + pid_s * N + rows, m + tl.log2(l), mask=rows < N)


@triton.jit
def _dq_kernel(Q, B, LSE2, G, DQP, N, K, D, sq_n, sq_d, sb_k, sb_d, scale_log2, scale, tiles_per_split,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
               ONE_D: tl.constexpr, PREC: tl.constexpr):
    """DQP[s, i, dchunk] = scale * sum_{j in split s} g_i p_ij b_j[dchunk]; p recomputed from LSE2."""
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    lse2 = tl.load(LSE2 + rows, mask=rows < N, other=0.0)
    g = tl.load(G + rows, mask=rows < N, other=0.0)
    cols_o = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    acc = tl.zeros([BLOCK_N, BLOCK_DO], dtype=tl.float32)
    if ONE_D:
        q = _load_tile(Q, rows, cols_o, N, D, sq_n, sq_d)
    k0 = pid_s * tiles_per_split * BLOCK_K
    for t in range(0, tiles_per_split):
        cols_k = k0 + t * BLOCK_K + tl.arange(0, BLOCK_K)
        b = _load_tile(B, cols_k, cols_o, K, D, sb_k, sb_d)
        if ONE_D:
            s = tl.dot(q, tl.trans(b), input_precision=PREC)
        else:
            s = _scores(Q, B, rows, cols_k, N, K, D, sq_n, sq_d, sb_k, sb_d, BLOCK_N, BLOCK_K, BLOCK_D, PREC)
        # columns past K get p = 2^(0 - lse) != 0 but meet b rows loaded as 0, so they add nothing
        # to p @ b. g_i is constant along the loop: applied once at the end, so p (<= 1) is rounded
        # to fp16 unscaled (p * g with g ~ 1/N would underflow fp16)
        p = tl.exp2(s * scale_log2 - lse2[:, None])
        acc = tl.dot(p.to(b.dtype), b, acc, input_precision=PREC)
    out = DQP + pid_s.to(tl.int64) * N * D + rows[:, None].to(tl.int64) * D + cols_o[None, :]
    tl.store(out, acc * (g * scale)[:, None], mask=(rows[:, None] < N) & (cols_o[None, :] < D))


@triton.jit
def _db_kernel(Q, B, LSE2, G, GMAX, DBP, N, K, D, sq_n, sq_d, sb_k, sb_d, scale_log2, scale, tiles_per_split,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
               ONE_D: tl.constexpr, PREC: tl.constexpr):
    """DBP[s, j, dchunk] = scale * sum_{i in split s} g_i p_ij q_i[dchunk] (loop over rows of q)."""
    pid_k = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    cols_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cols_o = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    acc = tl.zeros([BLOCK_K, BLOCK_DO], dtype=tl.float32)
    # g varies along this loop, so it multiplies p inside; divided by max|g| first so that p * g
    # stays in fp16 range (g ~ 1/N), and the max multiplied back at the end
    gmax = tl.load(GMAX)
    if ONE_D:
        b = _load_tile(B, cols_k, cols_o, K, D, sb_k, sb_d)
    n0 = pid_s * tiles_per_split * BLOCK_N
    for t in range(0, tiles_per_split):
        rows = n0 + t * BLOCK_N + tl.arange(0, BLOCK_N)
        q = _load_tile(Q, rows, cols_o, N, D, sq_n, sq_d)
        if ONE_D:
            s = tl.dot(q, tl.trans(b), input_precision=PREC)
        else:
            s = _scores(Q, B, rows, cols_k, N, K, D, sq_n, sq_d, sb_k, sb_d, BLOCK_N, BLOCK_K, BLOCK_D, PREC)
        lse2 = tl.load(LSE2 + rows, mask=rows < N, other=0.0)
        g = tl.load(G + rows, mask=rows < N, other=0.0) / gmax  # rows past N: s = 0, g = 0 -> p = 0
        p = tl.exp2(s * scale_log2 - lse2[:, None]) * g[:, None]
        acc = tl.dot(tl.trans(p.to(q.dtype)), q, acc, input_precision=PREC)
    out = DBP + pid_s.to(tl.int64) * K * D + cols_k[:, None].to(tl.int64) * D + cols_o[None, :]
    tl.store(out, acc * (scale * gmax), mask=(cols_k[:, None] < K) & (cols_o[None, :] < D))


def _blocks(D: int) -> tuple[int, int, bool]:
    """(BLOCK_D for the score reduction, BLOCK_DO for the gradient output chunk, ONE_D)."""
    block_d = max(16, min(triton.next_power_of_2(D), MAX_BLOCK_D))  # tl.dot needs dims >= 16
    return block_d, block_d, block_d >= D


def _lse_forward(q: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """lse_i = log sum_j exp(scale * q_i . b_j) in fp32, [N]."""
    N, D = q.shape
    K = b.shape[0]
    block_d, _, one_d = _blocks(D)
    n_blocks = triton.cdiv(N, BLOCK_N)
    splits, per = split(triton.cdiv(K, BLOCK_K), n_blocks, q.device)
    part = torch.empty(splits, N, device=q.device, dtype=torch.float32)
    _lse_fwd_kernel[(n_blocks, splits)](
        q, b, part, N, K, D, q.stride(0), q.stride(1), b.stride(0), b.stride(1), scale * LOG2E, per,
        BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, BLOCK_D=block_d, ONE_D=one_d, PREC=dot_precision(q.dtype),
        num_warps=NUM_WARPS, num_stages=NUM_STAGES.get(q.dtype, 3))
    return torch.logsumexp(part * LN2, dim=0)  # base-2 partials -> natural log, combined


def _lse_backward(q, b, lse, g, scale, need_q: bool, need_b: bool):
    N, D = q.shape
    K = b.shape[0]
    block_d, block_do, one_d = _blocks(D)
    lse2 = (lse * LOG2E).contiguous()
    g = g.float().contiguous()
    args = (N, K, D, q.stride(0), q.stride(1), b.stride(0), b.stride(1), scale * LOG2E, scale)
    meta = dict(BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, BLOCK_D=block_d, BLOCK_DO=block_do, ONE_D=one_d,
                PREC=dot_precision(q.dtype), num_warps=NUM_WARPS, num_stages=NUM_STAGES.get(q.dtype, 3))
    n_dblocks = triton.cdiv(D, block_do)
    dq = db = None
    if need_q:
        n_blocks = triton.cdiv(N, BLOCK_N)
        splits, per = split(triton.cdiv(K, BLOCK_K), n_blocks * n_dblocks, q.device)
        dqp = torch.empty(splits, N, D, device=q.device, dtype=torch.float32)
        _dq_kernel[(n_blocks, n_dblocks, splits)](q, b, lse2, g, dqp, *args, per, **meta)
        dq = dqp.sum(0) if splits > 1 else dqp[0]
    if need_b:
        n_blocks = triton.cdiv(K, BLOCK_K)
        splits, per = split(triton.cdiv(N, BLOCK_N), n_blocks * n_dblocks, q.device)
        dbp = torch.empty(splits, K, D, device=q.device, dtype=torch.float32)
        gmax = g.abs().amax().clamp_min(1e-30).reshape(1)  # stays on the device: no host sync
        _db_kernel[(n_blocks, n_dblocks, splits)](q, b, lse2, g, gmax, dbp, *args, per, **meta)
        db = dbp.sum(0) if splits > 1 else dbp[0]
    return dq, db


class RowLSE(torch.autograd.Function):
    """lse_i = log sum_j exp(scale * q_i . b_j) without storing the [N, K] matrix."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
        lse = _lse_forward(q, b, scale)
        ctx.save_for_backward(q, b, lse)
        ctx.scale = scale
        return lse

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        q, b, lse = ctx.saved_tensors
        dq, db = _lse_backward(q, b, lse, g, ctx.scale, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return (dq.to(q.dtype) if dq is not None else None,
                db.to(b.dtype) if db is not None else None, None)


def infonce_loss_triton(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None,
                        temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE through the RowLSE kernel (inputs already validated by the caller)."""
    check_runnable(q)
    kd = kernel_dtype(q.dtype)
    qf = F.normalize(q.float(), dim=1)
    kf = F.normalize(k.float(), dim=1)
    pos = (qf * kf).sum(dim=1) / temperature
    scale = 1.0 / temperature
    if queue is None:
        lse = RowLSE.apply(qf.to(kd), kf.to(kd), scale)
    else:
        lse = torch.logaddexp(pos, RowLSE.apply(qf.to(kd), queue.detach().to(kd), scale))
    loss = (lse - pos).mean()
    return loss.to(torch.float64) if q.dtype == torch.float64 else loss
