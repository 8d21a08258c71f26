"""The fused InfoNCE kernel against the plain-PyTorch reference (CPU: TRITON_INTERPRET=1 from
conftest). Tolerances: fp32 1e-5 relative; fp16 3e-3 relative (the kernel rounds the normalised
embeddings and the softmax tile to fp16 before its tensor-core dots, the reference computes in
fp32); bf16 (GPU only) 2e-2."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastdisco.errors import FastdiscoError
from fastdisco.kernels import infonce_loss, infonce_loss_reference

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _close(a: torch.Tensor, b: torch.Tensor, tol: float, floor: float = 1e-2) -> None:
    """max |a - b| within tol of the scale of b, never of less than floor (gradients of a mean
    loss are small)."""
    a, b = a.double(), b.double()
    err = (a - b).abs().max().item()
    assert err <= tol * max(b.abs().max().item(), floor), f"max err {err:.3g}, scale {b.abs().max().item():.3g}"


def _inputs(N, D, K, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, D, generator=g).to(device, dtype).requires_grad_()
    k = torch.randn(N, D, generator=g).to(device, dtype).requires_grad_()
    queue = None if K is None else F.normalize(torch.randn(K, D, generator=g), dim=1).to(device, dtype)
    return q, k, queue


def _compare(q, k, queue, dtype, temperature=0.2, upstream=1.7):
    """Forward and gradients (upstream gradient != 1) of triton vs reference."""
    tol = TOL[dtype]
    out = infonce_loss(q, k, queue, temperature, impl="triton")
    ref = infonce_loss_reference(q, k, queue, temperature)
    # The loss is logsumexp(logits) - positive logit, a difference of terms up to 1/temperature:
    # its rounding error scales with them, not with the (possibly ~0) loss. With a single logit
    # (N=1, no queue) the exact loss is 0 and the kernel's exp2/log2 leaves one ulp of the logit,
    # whose size depends on the CPU's SIMD math in numpy (AVX2 vs AVX-512) under the interpreter.
    _close(out, ref, tol, floor=1.0 / temperature)
    got = torch.autograd.grad(out * upstream, [q, k])
    want = torch.autograd.grad(ref * upstream, [q, k])
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == q.dtype
        _close(a, b, tol)


# (N, D, K): single rows, odd sizes, a D that needs two reduction chunks (200 > 128), and
# N, K past one 64-tile so several row blocks and K splits are combined.
SHAPES = [(1, 16, 1), (3, 16, 5), (33, 64, 100), (5, 200, 7), (65, 16, 130)]


@pytest.mark.parametrize("N,D,K", SHAPES)
@pytest.mark.parametrize("with_queue", [True, False])
def test_matches_reference_fp32(N, D, K, with_queue):
    q, k, queue = _inputs(N, D, K if with_queue else None, torch.float32)
    _compare(q, k, queue, torch.float32)


@pytest.mark.parametrize("N,D,K", [(3, 16, 5), (33, 64, 100)])
@pytest.mark.parametrize("with_queue", [True, False])
def test_matches_reference_fp16(N, D, K, with_queue):
    q, k, queue = _inputs(N, D, K if with_queue else None, torch.float16)
    _compare(q, k, queue, torch.float16)


def test_bf16_runs_and_matches():
    # on CPU the launcher computes bf16 in fp32 (the interpreter's bf16 tl.dot is wrong)
    q, k, queue = _inputs(9, 32, 20, torch.bfloat16)
    _compare(q, k, queue, torch.bfloat16)


def test_temperature_is_used():
    q, k, queue = _inputs(4, 16, 6, torch.float32)
    _compare(q, k, queue, torch.float32, temperature=0.07)


def test_orthogonal_queue_known_value():
    # q = k (different norms), every queue key orthogonal to them: logits [1/T, 0, ..., 0]
    T, K, D = 0.2, 5, 16
    q = torch.zeros(3, D)
    q[:, 0] = torch.tensor([1.0, 2.5, 0.3])
    queue = torch.eye(D)[1:K + 1]
    want = math.log(math.exp(1 / T) + K) - 1 / T
    for impl in ("torch", "triton"):
        got = infonce_loss(q.clone(), q.clone(), queue, T, impl=impl).item()
        assert got == pytest.approx(want, abs=2e-6)  # fp32: lse (~5) - 1/T cancels to 0.033


def test_in_batch_orthonormal_known_value():
    # q = k = orthonormal rows: row i has logit 1/T at i and 0 at the N - 1 others
    T, N = 0.5, 4
    q = torch.eye(8)[:N] * 3.0
    want = math.log(math.exp(1 / T) + N - 1) - 1 / T
    for impl in ("torch", "triton"):
        assert infonce_loss(q, q, None, T, impl=impl).item() == pytest.approx(want, abs=2e-6)


def test_scaling_before_normalisation_changes_nothing():
    q, k, queue = _inputs(6, 16, 9, torch.float32)
    a = infonce_loss(q, k, queue, impl="triton")
    b = infonce_loss(q * 3.0, k * 0.25, queue, impl="triton")
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_gradient_flow_queue_never_k_only_if_required():
    q, k, queue = _inputs(5, 16, 7, torch.float32)
    queue.requires_grad_()
    k_frozen = k.detach()  # MoCo: key encoder output has no grad
    infonce_loss(q, k_frozen, queue, impl="triton").backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert queue.grad is None
    # k gets the gradient of the positive logit when it requires one
    infonce_loss(q, k, queue, impl="triton").backward()
    want = torch.autograd.grad(infonce_loss_reference(q, k, queue), [k])[0]
    _close(k.grad, want, 1e-5)


def test_non_contiguous_inputs():
    # q, k as transposed / strided views; the queue as MoCo keeps it: a [D, K] buffer, passed .t()
    N, D, K = 7, 16, 11
    g = torch.Generator().manual_seed(3)
    q_t = torch.randn(D, N, generator=g).requires_grad_()
    k_wide = torch.randn(N, 2 * D, generator=g).requires_grad_()
    buf = F.normalize(torch.randn(D, K, generator=g), dim=0)
    q, k, queue = q_t.t(), k_wide[:, ::2], buf.t()
    assert not (q.is_contiguous() or k.is_contiguous() or queue.is_contiguous())
    out = infonce_loss(q, k, queue, impl="triton")
    ref = infonce_loss_reference(q, k, queue)
    _close(out, ref, 1e-5)
    for a, b in zip(torch.autograd.grad(out, [q_t, k_wide]), torch.autograd.grad(ref, [q_t, k_wide])):
        _close(a, b, 1e-5)


@pytest.mark.parametrize("with_queue", [True, False])
def test_reference_gradcheck_float64(with_queue):
    q, k, queue = _inputs(3, 5, 4 if with_queue else None, torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: infonce_loss_reference(a, b, queue, 0.3), (q, k))


def test_reference_matches_textbook_formula():
    # MoCo pseudocode: -log( exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.queue_j/T)) ), mean over rows
    q, k, queue = _inputs(4, 8, 6, torch.float64)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    pos = torch.exp((qn * kn).sum(1) / 0.2)
    neg = torch.exp(qn @ queue.t() / 0.2).sum(1)
    want = (-torch.log(pos / (pos + neg))).mean()
    assert infonce_loss_reference(q, k, queue, 0.2).item() == pytest.approx(want.item(), rel=1e-12)


def test_auto_on_cpu_is_reference():
    q, k, queue = _inputs(3, 8, 4, torch.float32)
    assert torch.equal(infonce_loss(q, k, queue), infonce_loss_reference(q, k, queue))


@pytest.mark.parametrize("bad", [
    dict(impl="cuda"),
    dict(temperature=0.0),
    dict(queue=torch.randn(4, 9)),
    dict(k=torch.randn(3, 7)),
    dict(q=torch.randn(3, 8, 1)),
])
def test_bad_input_is_one_line_error(bad):
    args = dict(q=torch.randn(3, 8), k=torch.randn(3, 8), queue=None, temperature=0.2, impl="torch")
    args.update(bad)
    with pytest.raises(FastdiscoError):
        infonce_loss(**args)


# --- full sizes on CUDA (run on the GPU machine) -------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("N,D,K", [(257, 128, 4097), (1024, 128, 65536), (257, 2048, 4097), (1, 256, 65536)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_full_size(N, D, K, dtype):
    q, k, queue = _inputs(N, D, K, dtype, device="cuda")
    _compare(q, k, queue, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("N,D", [(257, 128), (1024, 256)])
def test_gpu_in_batch(N, D):
    q, k, _ = _inputs(N, D, None, torch.bfloat16, device="cuda")
    _compare(q, k, None, torch.bfloat16)


@pytest.mark.gpu
def test_gpu_memory_is_not_n_times_k():
    # the reference materialises N x (K+1) fp32 logits (1 GiB here); the kernel stays far below
    N, D, K = 4096, 128, 65536
    q, k, queue = _inputs(N, D, K, torch.bfloat16, device="cuda")
    k = k.detach()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    infonce_loss(q, k, queue, impl="triton").backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < N * (K + 1) * 4 / 10, f"extra memory {extra / 2**20:.1f} MiB"


def test_without_interpreter_cpu_triton_is_a_clear_error():
    # a fresh process without TRITON_INTERPRET: importing the package does not import triton, the
    # reference runs, and impl="triton" on CPU tensors is a one-line FastdiscoError
    import os
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "import fastdisco.kernels as K\n"
        "assert 'triton' not in sys.modules\n"
        "q = torch.randn(3, 8)\n"
        "K.infonce_loss(q, q, impl='auto')\n"
        "from fastdisco.errors import FastdiscoError\n"
        "try:\n"
        "    K.infonce_loss(q, q, impl='triton')\n"
        "except FastdiscoError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR impl='triton' cannot run on cpu" in out.stdout
