"""Fused embedding-distillation, symmetric-KL and soft-CE kernels against their references
(CPU: TRITON_INTERPRET=1 from conftest). Tolerances: fp32 1e-5 relative, fp16 3e-3 (the
kernels accumulate in fp32 and round only the stored gradient), bf16 (GPU) 2e-2."""
import math

import pytest
import torch

from fastdisco.errors import FastdiscoError
from fastdisco.kernels import (
    embedding_distill_loss,
    embedding_distill_loss_reference,
    soft_ce_loss,
    soft_ce_loss_reference,
    symmetric_kl_loss,
    symmetric_kl_loss_reference,
)
from fastdisco.kernels import kl as kl_module

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
LOGIT_LOSSES = [(symmetric_kl_loss, symmetric_kl_loss_reference), (soft_ce_loss, soft_ce_loss_reference)]


def _close(a, b, tol):
    a, b = a.double(), b.double()
    err = (a - b).abs().max().item()
    assert err <= tol * max(b.abs().max().item(), 1e-2), f"max err {err:.3g}, scale {b.abs().max().item():.3g}"


def _pair(N, D, dtype, device="cpu", seed=0, teacher_grad=True, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(N, D, generator=g) * scale).to(device, dtype).requires_grad_()
    t = (torch.randn(N, D, generator=g) * scale).to(device, dtype).requires_grad_(teacher_grad)
    return s, t


def _compare(fn, ref, s, t, tol, upstream=1.7, **kw):
    out, want = fn(s, t, impl="triton", **kw), ref(s, t, **kw)
    _close(out, want, tol)
    inputs = [x for x in (s, t) if x.requires_grad]
    w = upstream if out.dim() == 0 else torch.linspace(-1.0, 2.0, out.numel(), device=out.device)
    got = torch.autograd.grad((out * w).sum(), inputs)
    exp = torch.autograd.grad((want * w).sum(), inputs)
    for a, b, x in zip(got, exp, inputs):
        assert a.dtype == x.dtype
        _close(a, b, tol)


# --- embedding distillation -----------------------------------------------------------------------

@pytest.mark.parametrize("N,D", [(1, 16), (3, 64), (33, 16), (40, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_distill_matches_reference(N, D, dtype):
    s, t = _pair(N, D, dtype)
    _compare(embedding_distill_loss, embedding_distill_loss_reference, s, t, TOL[dtype])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_distill_reductions_frozen_teacher(reduction):
    s, t = _pair(5, 16, torch.float32, teacher_grad=False)
    _compare(embedding_distill_loss, embedding_distill_loss_reference, s, t, 1e-5, reduction=reduction)


def test_distill_sum_is_n_times_mean_and_two_minus_two_cos():
    s, t = _pair(6, 16, torch.float32)
    per_row = embedding_distill_loss(s, t, reduction="none", impl="triton")
    cos = torch.nn.functional.cosine_similarity(s, t, dim=1)
    _close(per_row, 2 - 2 * cos, 1e-5)
    total = embedding_distill_loss(s, t, reduction="sum", impl="triton")
    mean = embedding_distill_loss(s, t, reduction="mean", impl="triton")
    assert total.item() == pytest.approx(6 * mean.item(), rel=1e-6)


def test_distill_identical_is_zero_with_zero_gradient():
    s, _ = _pair(4, 32, torch.float32)
    t = (s.detach() * 3.0).requires_grad_()  # same direction, other norm
    out = embedding_distill_loss(s, t, impl="triton")
    assert abs(out.item()) < 1e-6
    for grad in torch.autograd.grad(out, [s, t]):
        assert grad.abs().max().item() < 1e-6


def test_distill_scaling_before_normalisation_changes_nothing():
    s, t = _pair(5, 16, torch.float32)
    a = embedding_distill_loss(s, t, impl="triton")
    b = embedding_distill_loss(s * 4.0, t * 0.1, impl="triton")
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_distill_zero_row_follows_f_normalize():
    # below eps F.normalize divides by eps instead of the norm: same value and gradient
    s, t = _pair(3, 16, torch.float32)
    with torch.no_grad():
        s[1] = 0.0
    _compare(embedding_distill_loss, embedding_distill_loss_reference, s, t, 1e-5)


def test_distill_non_contiguous():
    g = torch.Generator().manual_seed(1)
    s_t = torch.randn(16, 5, generator=g).requires_grad_()
    t_w = torch.randn(5, 32, generator=g)
    s, t = s_t.t(), t_w[:, 1::2]
    out, ref = embedding_distill_loss(s, t, impl="triton"), embedding_distill_loss_reference(s, t)
    _close(out, ref, 1e-5)
    _close(torch.autograd.grad(out, s_t)[0], torch.autograd.grad(ref, s_t)[0], 1e-5)


# --- symmetric KL and soft cross-entropy ----------------------------------------------------------

@pytest.mark.parametrize("fn,ref", LOGIT_LOSSES)
@pytest.mark.parametrize("N,C", [(1, 16), (3, 10), (33, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_logit_losses_match_reference(fn, ref, N, C, dtype):
    s, t = _pair(N, C, dtype, scale=2.0)
    _compare(fn, ref, s, t, TOL[dtype])


@pytest.mark.parametrize("fn,ref", LOGIT_LOSSES)
def test_logit_losses_temperature_frozen_teacher(fn, ref):
    s, t = _pair(4, 12, torch.float32, teacher_grad=False, scale=3.0)
    _compare(fn, ref, s, t, 1e-5, temperature=0.5)
    a = fn(s, t, temperature=4.0, impl="triton")
    b = fn(s / 4.0, t / 4.0, temperature=1.0, impl="triton")
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


@pytest.mark.parametrize("fn,ref", LOGIT_LOSSES)
def test_logit_losses_wide_rows_two_pass(fn, ref, monkeypatch):
    # rows wider than one tile take the online two-pass path; shrink the tile to reach it cheaply
    monkeypatch.setattr(kl_module, "MAX_SINGLE_C", 16)
    monkeypatch.setattr(kl_module, "CHUNK_C", 16)
    s, t = _pair(3, 50, torch.float32, scale=3.0)
    _compare(fn, ref, s, t, 1e-5, temperature=0.7)


def test_symmetric_kl_hand_formula():
    # p = softmax([ln 3, 0]) = [3/4, 1/4], q = softmax([0, 0]) = [1/2, 1/2]:
    # 0.5 sum (p - q)(ln p - ln q) = 0.5 (1/4 ln(3/2) - 1/4 ln(1/2)) = ln(3) / 8
    s = torch.zeros(1, 2)
    t = torch.tensor([[math.log(3.0), 0.0]])
    for impl in ("torch", "triton"):
        assert symmetric_kl_loss(s, t, impl=impl).item() == pytest.approx(math.log(3.0) / 8, rel=1e-6)
        # soft CE: -(3/4 ln 1/2 + 1/4 ln 1/2) = ln 2
        assert soft_ce_loss(s, t, impl=impl).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_symmetric_kl_identical_is_zero_soft_ce_is_entropy():
    s, _ = _pair(5, 20, torch.float32, scale=2.0)
    t = (s.detach() + 7.0).requires_grad_()  # softmax is shift-invariant: identical distributions
    out = symmetric_kl_loss(s, t, impl="triton")
    assert abs(out.item()) < 1e-6
    for grad in torch.autograd.grad(out, [s, t]):
        assert grad.abs().max().item() < 1e-6
    p = torch.softmax(s.detach(), dim=1)
    entropy = -(p * p.log()).sum(1).mean()
    assert soft_ce_loss(s, t, impl="triton").item() == pytest.approx(entropy.item(), rel=1e-5)


@pytest.mark.parametrize("fn,ref", LOGIT_LOSSES)
def test_logit_losses_non_contiguous(fn, ref):
    g = torch.Generator().manual_seed(2)
    s_t = torch.randn(10, 4, generator=g).requires_grad_()
    t_w = torch.randn(4, 20, generator=g).requires_grad_()
    s, t = s_t.t(), t_w[:, ::2]
    out, want = fn(s, t, impl="triton"), ref(s, t)
    _close(out, want, 1e-5)
    for a, b in zip(torch.autograd.grad(out, [s_t, t_w]), torch.autograd.grad(want, [s_t, t_w])):
        _close(a, b, 1e-5)


def test_bf16_runs_and_matches():
    s, t = _pair(3, 24, torch.bfloat16, scale=2.0)
    for fn, ref in LOGIT_LOSSES:
        _compare(fn, ref, s, t, TOL[torch.bfloat16])
    _compare(embedding_distill_loss, embedding_distill_loss_reference, s, t, TOL[torch.bfloat16])


# --- references and errors ------------------------------------------------------------------------

@pytest.mark.parametrize("ref", [embedding_distill_loss_reference, symmetric_kl_loss_reference,
                                 soft_ce_loss_reference])
def test_reference_gradcheck_float64(ref):
    s, t = _pair(3, 5, torch.float64)
    assert torch.autograd.gradcheck(ref, (s, t))


def test_symmetric_kl_reference_is_mean_of_two_kls():
    s, t = _pair(4, 6, torch.float64)
    ls, lt = torch.log_softmax(s, 1), torch.log_softmax(t, 1)
    kl = torch.nn.functional.kl_div  # kl_div(input=log q, target=log p, log_target) = KL(p || q)
    want = 0.5 * (kl(ls, lt, reduction="batchmean", log_target=True)
                  + kl(lt, ls, reduction="batchmean", log_target=True))
    assert symmetric_kl_loss_reference(s, t).item() == pytest.approx(want.item(), rel=1e-12)


@pytest.mark.parametrize("call", [
    lambda: embedding_distill_loss(torch.randn(3, 4), torch.randn(3, 5)),
    lambda: embedding_distill_loss(torch.randn(3, 4), torch.randn(3, 4), reduction="avg"),
    lambda: symmetric_kl_loss(torch.randn(3, 4), torch.randn(3, 4), temperature=-1.0),
    lambda: soft_ce_loss(torch.randn(3, 4), torch.randn(3, 4), impl="fast"),
    lambda: soft_ce_loss(torch.randn(3, 4, dtype=torch.float64).long(), torch.randn(3, 4)),
])
def test_bad_input_is_one_line_error(call):
    with pytest.raises(FastdiscoError):
        call()


# --- full sizes on CUDA ---------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("N,D", [(257, 128), (1024, 2048)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_distill_full_size(N, D, dtype):
    s, t = _pair(N, D, dtype, device="cuda")
    _compare(embedding_distill_loss, embedding_distill_loss_reference, s, t, TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("fn,ref", LOGIT_LOSSES)
@pytest.mark.parametrize("N,C", [(257, 1000), (1024, 1000), (64, 21841)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_logit_losses_full_size(fn, ref, N, C, dtype):
    s, t = _pair(N, C, dtype, device="cuda", scale=3.0)
    _compare(fn, ref, s, t, TOL[dtype])
