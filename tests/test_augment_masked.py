"""The batched colour path (augment.device.color_view: one packed plan per view, masked and
sliced ops, no per-op index copies) against the per-op gather/scatter implementation it
replaced, kept here as the reference: bit-identical on the same draws, for every recipe."""
from __future__ import annotations

import pytest
import torch

import fastdisco._compat  # noqa: F401
from fastdisco import augment as A
from fastdisco.augment import ops
from fastdisco.augment.recipes import blur_kernel_size


# --------------------------------------------------------------------------- the old implementation
def _old_apply_rows(x, mask, fn):
    idx = mask.nonzero().flatten()
    if not idx.numel():
        return x
    rows = idx.to(x.device, non_blocking=True)
    x = x.clone() if x.requires_grad else x
    x.index_copy_(0, rows, fn(x.index_select(0, rows), idx))
    return x


def old_color_view(x, params, resolution):
    f, order, jit = params["jitter_factors"], params["jitter_order"], params["jitter"]
    if bool(jit.any()):
        for pos in range(4):
            for k, fn in enumerate(ops.JITTER_OPS):
                sel = jit & (order[:, pos] == k)
                x = _old_apply_rows(x, sel, lambda xs, r, fn=fn, k=k: fn(xs, f[r, k]))
    x = _old_apply_rows(x, params["gray"], lambda xs, r: ops.grayscale3(xs))
    ks = blur_kernel_size(resolution)
    x = _old_apply_rows(x, params["blur"], lambda xs, r: ops.gaussian_blur(xs, params["blur_sigma"][r], ks))
    x = _old_apply_rows(x, params["solarize"], lambda xs, r: ops.solarize(xs))
    x = _old_apply_rows(x, params["flip"], lambda xs, r: ops.hflip(xs))
    return x


def _batch(seed, B, res, recipe):
    g = A.make_generator(seed, 0, 0, 0)
    x = torch.rand(B, 3, res, res, generator=g)
    x[0] = 0.5  # gray pixels (hue's c = 0 branch) and saturated ones
    x[1, :, : res // 2] = 1.0
    params = A.sample_params(g, A.RECIPES[recipe], torch.full((B,), 64), torch.full((B,), 80), res)
    return x, params


@pytest.mark.parametrize("recipe", ["mocov2", "byol", "ssld"])
def test_masked_color_view_is_bit_identical_to_the_per_op_gathers(recipe):
    for seed in range(3):
        x, params = _batch(seed, 24, 16, recipe)
        for p in params:
            assert bool(p["jitter"].any()) == (recipe != "ssld")  # ssld: flip only
            got = A.color_view(x.clone(), p, 16)
            want = old_color_view(x.clone(), p, 16)
            assert torch.equal(got, want), (recipe, seed, (got - want).abs().max())


def test_masked_color_view_edge_cases_and_layout():
    x, (p, _) = _batch(7, 12, 16, "byol")
    for flags in ("none", "all"):
        q = {k: v.clone() for k, v in p.items()}
        for k in ("jitter", "gray", "blur", "solarize", "flip"):
            q[k][:] = flags == "all"
        assert torch.equal(A.color_view(x.clone(), q, 16), old_color_view(x.clone(), q, 16))
    # channels_last in, channels_last out (the old index_select returned NCHW), same values
    xc = x.contiguous(memory_format=torch.channels_last)
    got = A.color_view(xc.clone(), p, 16)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - old_color_view(x.clone(), p, 16)).abs().max() < 1e-6


def test_no_per_op_index_copies(monkeypatch):
    """One plan per view reaches the device: index_select runs twice (reorder, restore), never per op."""
    calls = []
    real = torch.Tensor.index_select
    monkeypatch.setattr(torch.Tensor, "index_select", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    x, (p, _) = _batch(1, 16, 16, "byol")
    A.color_view(x, p, 16)
    assert len(calls) == 2
