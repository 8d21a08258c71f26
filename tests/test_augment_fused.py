"""The fused numba kernel of the CPU path (augment_fused) against the torch ops it replaces
(augment.color_one + addcmul normalisation, themselves checked against torchvision in
test_augment.py), forced through augment.set_cpu_kernel.

Tolerance: TOL = 1e-5 on the normalised output (which spans about [-2.2, 2.7]). The kernel
repeats torch's float32 operations in the same order, with an fma where torch's CPU kernels
fuse one, so most outputs are bit-identical; contrast's mean gray is summed in another order
(per column in float64 vs torch's float32 cascade), ~1 ulp of the mean, which moves an output
by at most ~1e-6."""
import itertools
import sys
from dataclasses import replace

import pytest
import torch

import fastdisco.augment
from fastdisco import augment as A
from fastdisco.augment import cpu as AC

pytest.importorskip("numba")
from fastdisco.augment import cpu_fused as AF  # noqa: E402

TOL = 1e-5
# torch's vectorised add(alpha=) / addcmul are one fma on AVX2 / AVX512 CPUs (the kernel's
# choice); elsewhere they round twice, and only TOL holds
FMA_TORCH = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
OPS = ("brightness", "contrast", "saturation", "hue", "gray", "blur", "solarize", "flip")


@pytest.fixture(autouse=True)
def fused_by_default():
    prev = A.set_cpu_kernel("fused")
    yield
    A.set_cpu_kernel(prev)


def _crops(B: int, res: int, seed: int = 0) -> torch.Tensor:
    """float crops in [0, 255] with out-of-range values (clamped), gray pixels (hue undefined),
    exact ties between channels and saturated pixels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, res, res, generator=g) * 270.0 - 8.0
    x[:, :, 0] = x[:, :1, 0]                      # first row gray
    x[:, 1, 1] = x[:, 0, 1]                       # second row: r == g
    x[:, :, :, 0] = 255.0                         # saturated column
    if res > 3:
        x[:, :, 2:4, 2:4] = torch.tensor([255.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return x


def _params(B: int, res: int, on: set[str], seed: int = 1, sigma: float | None = None) -> dict[str, torch.Tensor]:
    """byol view-2 params (wide jitter ranges) with exactly the ops in `on` firing on every sample."""
    g = torch.Generator().manual_seed(seed)
    spec = replace(A.RECIPES["mocov2"][0], jitter=(0.6, 0.6, 0.6, 0.5))
    p = A.sample_view_params(g, spec, torch.full((B,), res), torch.full((B,), res), res)
    jit = [k for k in ("brightness", "contrast", "saturation", "hue") if k in on]
    p["jitter"][:] = bool(jit)
    if jit:  # ops not asked for get the identity factor (hue shift 0 still runs the hue op)
        ident = torch.tensor([1.0, 1.0, 1.0, 0.0])
        keep = torch.tensor([k in on for k in ("brightness", "contrast", "saturation", "hue")])
        p["jitter_factors"] = torch.where(keep, p["jitter_factors"], ident)
    for k in ("gray", "blur", "solarize", "flip"):
        p[k][:] = k in on
    if sigma is not None:
        p["blur_sigma"][:] = sigma
    return p


def _both(crops: torch.Tensor, p: dict, res: int, channels_last: bool, dtype=torch.float32):
    out = {}
    for kernel in ("torch", "fused"):
        A.set_cpu_kernel(kernel)
        out[kernel] = A.photometric_cpu(crops, p, res, dtype, channels_last)
    A.set_cpu_kernel("fused")
    return out["torch"], out["fused"]


def _check(want: torch.Tensor, got: torch.Tensor, channels_last: bool) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt)
    err = (got - want).abs().max().item()
    assert err < TOL, err


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("res", [7, 33])
@pytest.mark.parametrize("op", OPS + ("none",))
def test_each_op_alone(op, res, channels_last):
    B = 3
    p = _params(B, res, {op})
    want, got = _both(_crops(B, res), p, res, channels_last)
    _check(want, got, channels_last)
    if op != "contrast" and FMA_TORCH:  # the same float32 operations in the same order
        assert torch.equal(want, got)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("first", range(4))
def test_every_jitter_order_with_other_ops(first, channels_last):
    """The 24 permutations (6 per case, by first op), each with every jitter op, and gray /
    blur / solarize / flip in varied combinations."""
    perms = [q for q in itertools.permutations(range(4)) if q[0] == first]
    B, res = len(perms), 33
    p = _params(B, res, {"brightness", "contrast", "saturation", "hue"}, seed=10 + first)
    p["jitter_order"] = torch.tensor(perms)
    combos = torch.tensor(list(itertools.product([False, True], repeat=4))[first::2][:B])  # gray, blur, solarize, flip
    for c, k in enumerate(("gray", "blur", "solarize", "flip")):
        p[k] = combos[:, c].clone()
    want, got = _both(_crops(B, res, seed=first), p, res, channels_last)
    _check(want, got, channels_last)


@pytest.mark.parametrize("sigma", [0.1, 2.0])
def test_blur_sigma_ends_at_224(sigma):
    """The recipes' resolution: 23-tap kernel, 3 heavy taps at sigma 0.1, all 23 at 2.0."""
    B, res = 2, 224
    p = _params(B, res, {"blur", "hue", "contrast"}, sigma=sigma)
    want, got = _both(_crops(B, res), p, res, True)
    _check(want, got, True)


def test_batched_blur_weights_equal_color_ones_per_sample_kernels():
    """FusedView draws every sample's Gaussian in one call; color_one one sigma at a time."""
    sig = torch.rand(500, generator=torch.Generator().manual_seed(0)) * 1.9 + 0.1
    sig[:2] = torch.tensor([0.1, 2.0])
    p = {"blur_sigma": sig.tolist(), "flip": [False] * 500, "jitter_factors": [[1.0, 1.0, 1.0, 0.0]] * 500,
         "jitter_order": [[0, 1, 2, 3]] * 500, "jitter": [False] * 500, "gray": [False] * 500,
         "blur": [True] * 500, "solarize": [False] * 500}
    for res in (7, 33, 224):
        fv = AF.FusedView(p, res)
        ks = A.blur_kernel_size(res)
        for n, s in enumerate(p["blur_sigma"]):
            w = A.ops.gaussian_kernels(torch.tensor([s]), ks)[0]
            assert torch.equal(torch.from_numpy(fv.weights[n]), w)
            heavy = (w >= A.ops.NEGLIGIBLE_TAP).nonzero().flatten()
            assert fv.taps[n].tolist() == [heavy[0].item(), heavy[-1].item() + 1]


def test_uint8_nhwc_crops_as_dali_and_ffcv_deliver_them():
    """photometric_cpu on uint8 NHWC views (a permuted batch): the kernel reads them as they are."""
    B, res = 4, 33
    crops = (torch.rand(B, res, res, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    crops = crops.permute(0, 3, 1, 2)
    p = _params(B, res, set(OPS))
    p["flip"][::2] = False
    for cl in (True, False):
        want, got = _both(crops, p, res, cl)
        _check(want, got, cl)
    out = torch.full((B, 3, res, res), float("nan"))  # a reused output batch (NCHW here)
    assert A.photometric_cpu(crops, p, res, torch.float32, out=out) is out
    assert torch.equal(out, got)


@pytest.mark.parametrize("crop_u8", [False, True])
def test_augment_cpu_recipes_pool_and_replay(crop_u8):
    """Whole CPU pipeline per recipe (eval crops are non-contiguous slices; crop_u8 hands the
    kernel uint8 crops): fused == torch ops within TOL, a CpuPool(2) == inline bit for bit,
    and apply_view replays a view exactly."""
    g = A.make_generator(5, 0, 0, 1)
    B, res = 6, 24
    u8 = (torch.rand(B, 3, 40, 50, generator=g) * 255).round().to(torch.uint8)
    h, w = torch.tensor([40, 33, 40, 21, 40, 40]), torch.tensor([50, 50, 17, 50, 50, 29])
    for recipe in ("mocov2", "byol", "eval"):
        params = A.sample_params(g, A.RECIPES[recipe], h, w, res)
        for p in params:
            p["jitter"][:4], p["gray"][0], p["blur"][1:3], p["solarize"][3:], p["flip"][2] = True, True, True, True, True
        A.set_cpu_kernel("torch")
        want = A.augment_cpu(u8, params, res, torch.float32, crop_u8=crop_u8)
        A.set_cpu_kernel("fused")
        got = A.augment_cpu(u8, params, res, torch.float32, crop_u8=crop_u8)
        pooled = A.augment_cpu(u8, params, res, torch.float32, run=A.CpuPool(2), crop_u8=crop_u8)
        for v, (wv, gv, pv) in enumerate(zip(want, got, pooled)):
            _check(wv, gv, True)
            assert torch.equal(gv, pv), recipe
            assert torch.equal(A.apply_view(u8, params[v], res, crop_u8=crop_u8), gv), recipe


def test_fused_is_the_default_and_is_used(monkeypatch):
    """With numba importable the CPU path runs the fused kernel (no silent fallback)."""
    assert A.cpu_kernel() == "fused" and A.warm_up_cpu() == "fused"
    calls = []
    real = AF.photometric_one
    monkeypatch.setattr(AF, "photometric_one", lambda *a: calls.append(1) or real(*a))
    B, res = 3, 16
    A.photometric_cpu(_crops(B, res), _params(B, res, set(OPS)), res, torch.float32)
    assert len(calls) == B
    # one compiled signature serves every input (float32 / uint8, planar / NHWC, both layouts)
    assert len(AF._photometric.signatures) == 1
    A.set_cpu_kernel("torch")
    assert A.cpu_kernel() == "torch"
    A.photometric_cpu(_crops(B, res), _params(B, res, set(OPS)), res, torch.float32)
    assert len(calls) == B


def test_bf16_output_falls_back_to_the_torch_ops():
    B, res = 3, 16
    crops, p = _crops(B, res), _params(B, res, set(OPS))
    want, got = _both(crops, p, res, True, dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(want, got)
    assert A.cpu_kernel(torch.bfloat16) == "torch"
    # and the kernel itself declines such an output (nothing written)
    out = torch.zeros(3, res, res, dtype=torch.bfloat16)
    assert not AF.photometric_one(crops[:1], AF.FusedView(A.host_params(p), res), 0, out)
    assert not out.any()


def test_no_numba_falls_back(monkeypatch):
    """Where numba cannot be imported the torch ops run, with a warning saying so."""
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "fastdisco.augment.cpu_fused")
    monkeypatch.delattr(fastdisco.augment, "cpu_fused")  # else `from fastdisco.augment import` finds it
    monkeypatch.setattr(AC, "_fused_mod", None)
    monkeypatch.setattr(AC, "_fused_error", None)
    with pytest.warns(UserWarning, match="fused CPU augmentation kernel is unavailable"):
        assert A.cpu_kernel() == "torch"
    B, res = 2, 16
    crops, p = _crops(B, res), _params(B, res, set(OPS))
    got = A.photometric_cpu(crops, p, res, torch.float32)
    A.set_cpu_kernel("torch")
    assert torch.equal(A.photometric_cpu(crops, p, res, torch.float32), got)


def test_unknown_kernel_is_an_error():
    from fastdisco.errors import FastdiscoError

    with pytest.raises(FastdiscoError, match="fused, torch"):
        A.set_cpu_kernel("cuda")
