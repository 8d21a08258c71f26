"""Grouped BN (fastdisco.models.grouped_bn): equal to the implementation it replaced (kept below
as the reference) and to plain BN run on each group by hand - forward, backward, running
statistics, in both memory formats -, batched views equal one forward per view, and no copy of
the activation is ever made."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fastdisco.models.grouped_bn import (GroupedBatchNorm1d, GroupedBatchNorm2d, batched_views, convert_grouped_bn,
                                         group_layout, mixes_views)

CL = torch.channels_last


class OldGroupedBatchNorm2d(nn.BatchNorm2d):
    """The implementation before the copy-free one, verbatim: the reference for the semantics.
    [N, C, H, W] -> [N/G, G*C, H, W] (a copy in channels_last), F.batch_norm, copy back."""

    def __init__(self, num_features, group_size, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group_size = group_size

    def forward(self, x):
        n, c, h, w = x.shape
        groups = n // self.group_size
        if not self.training or groups < 2 or n % self.group_size:
            return super().forward(x)
        mean = self.running_mean.repeat(groups) if self.track_running_stats else None
        var = self.running_var.repeat(groups) if self.track_running_stats else None
        wgt = self.weight.repeat(groups) if self.affine else None
        bias = self.bias.repeat(groups) if self.affine else None
        y = F.batch_norm(x.reshape(n // groups, groups * c, h, w), mean, var, wgt, bias, True,
                         self.momentum if self.momentum is not None else 0.1, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(groups, c).mean(0))
                self.running_var.copy_(var.view(groups, c).mean(0))
                self.num_batches_tracked.add_(1)
        fmt = CL if x.is_contiguous(memory_format=CL) else torch.contiguous_format
        return y.reshape(n, c, h, w).contiguous(memory_format=fmt)


def _pair(c=5, group_size=4, momentum=0.1, dtype=torch.float64, seed=0):
    """A new and an old grouped BN with the same non-trivial parameters and running stats."""
    torch.manual_seed(seed)
    new = GroupedBatchNorm2d(c, group_size, momentum=momentum).to(dtype)
    with torch.no_grad():
        new.weight.uniform_(0.5, 2), new.bias.normal_()
        new.running_mean.normal_(), new.running_var.uniform_(0.5, 2)
    old = OldGroupedBatchNorm2d(c, group_size, momentum=momentum).to(dtype)
    old.load_state_dict(new.state_dict())
    return new, old


def _input(n, c=5, hw=3, fmt=torch.contiguous_format, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, hw, hw, generator=g, dtype=dtype) * 3 + 1
    return x.contiguous(memory_format=fmt)


def _run(bn, x, dy):
    """Forward + backward: (y, dx, dweight, dbias, state after)."""
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    bn.weight.grad = bn.bias.grad = None
    y = bn(x)
    y.backward(dy)
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad, {k: v.clone() for k, v in bn.state_dict().items()}


def _assert_same(a, b, **tol):
    for u, v in zip(a[:4], b[:4]):
        torch.testing.assert_close(u, v, **tol)
    assert a[4].keys() == b[4].keys()
    for k in a[4]:
        torch.testing.assert_close(a[4][k], b[4][k], **tol)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("n,group_size,momentum", [(12, 4, 0.1), (16, 4, None), (8, 4, 0.3), (6, 4, 0.1), (4, 4, 0.1)],
                         ids=["3groups", "4groups-momNone", "2groups", "nosplit-plain", "1group-plain"])
def test_new_equals_old_implementation(fmt, n, group_size, momentum):
    new, old = _pair(group_size=group_size, momentum=momentum)
    x = _input(n, fmt=fmt)
    dy = torch.randn_like(x)
    for _ in range(2):  # two steps: the running statistics carry over
        a, b = _run(new, x, dy), _run(old, x, dy)
        _assert_same(a, b, rtol=1e-10, atol=1e-10)
        assert a[0].is_contiguous(memory_format=fmt) and a[1].is_contiguous(memory_format=fmt)
    new.eval(), old.eval()
    torch.testing.assert_close(new(x), old(x), rtol=1e-10, atol=1e-10)  # eval: the running statistics


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["contiguous", "channels_last"])
def test_equals_plain_bn_per_group_by_hand(fmt):
    """Group g = samples i with i % G == g, each normalised by a plain BatchNorm2d of its own;
    running stats = the mean over groups of what each group's BN left; grads summed over groups."""
    new, _ = _pair(group_size=4)
    x, groups = _input(12, fmt=fmt), 3
    dy = torch.randn_like(x)
    y, dx, dw, db, state = _run(new, x, dy)
    init = {k: v.clone() for k, v in _pair(group_size=4)[0].state_dict().items()}
    expect_y, expect_dx = torch.empty_like(x), torch.empty_like(x)
    dws, dbs, means, vars_ = [], [], [], []
    for g in range(groups):
        ref = nn.BatchNorm2d(5).double()
        ref.load_state_dict(init)
        xg = x[g::groups].clone().requires_grad_(True)
        out = ref(xg)
        out.backward(dy[g::groups])
        expect_y[g::groups], expect_dx[g::groups] = out.detach(), xg.grad
        dws.append(ref.weight.grad), dbs.append(ref.bias.grad)
        means.append(ref.running_mean), vars_.append(ref.running_var)
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, expect_y, **tol)
    torch.testing.assert_close(dx, expect_dx, **tol)
    torch.testing.assert_close(dw, sum(dws), **tol)
    torch.testing.assert_close(db, sum(dbs), **tol)
    torch.testing.assert_close(state["running_mean"], torch.stack(means).mean(0), **tol)
    torch.testing.assert_close(state["running_var"], torch.stack(vars_).mean(0), **tol)
    assert int(state["num_batches_tracked"]) == 1


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("b,group_size", [(8, 4), (12, 4), (6, 4), (8, 0)],
                         ids=["2groups-per-view", "3groups-per-view", "view-is-one-group", "size0-whole-view"])
def test_batched_views_equal_one_forward_per_view(fmt, b, group_size):
    """[x0; x1] inside batched_views(2) == x0 and x1 through the layer one after the other:
    outputs, input grads, parameter grads (summed), running stats and num_batches_tracked."""
    batched, _ = _pair(group_size=group_size, momentum=0.2)
    separate, _ = _pair(group_size=group_size, momentum=0.2)
    x0, x1 = _input(b, fmt=fmt, seed=1), _input(b, fmt=fmt, seed=2) * 0.5 - 1
    dy0, dy1 = torch.randn_like(x0), torch.randn_like(x1)
    x = torch.cat([x0, x1]).requires_grad_(True)
    with batched_views(2):
        y = batched(x)
    y.backward(torch.cat([dy0, dy1]))
    xs = [x0.clone().requires_grad_(True), x1.clone().requires_grad_(True)]
    ys = [separate(xs[0]), separate(xs[1])]
    (ys[0] * dy0).sum().add((ys[1] * dy1).sum()).backward()
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y.detach(), torch.cat(ys).detach(), **tol)
    torch.testing.assert_close(x.grad, torch.cat([xs[0].grad, xs[1].grad]), **tol)
    torch.testing.assert_close(batched.weight.grad, separate.weight.grad, **tol)
    torch.testing.assert_close(batched.bias.grad, separate.bias.grad, **tol)
    for k, v in separate.state_dict().items():
        torch.testing.assert_close(batched.state_dict()[k], v, **tol)
    assert int(batched.num_batches_tracked) == 2
    assert y.is_contiguous(memory_format=fmt) and x.grad.is_contiguous(memory_format=fmt)
    # and the views are really kept apart: one forward over the whole batch differs
    assert not torch.allclose(batched(x.detach()), y.detach())


def test_layout():
    assert group_layout(12, 4) == (1, 3)
    assert group_layout(6, 4) == (1, 1) and group_layout(4, 4) == (1, 1) and group_layout(8, 0) == (1, 1)
    assert group_layout(16, 4, views=2) == (2, 2) and group_layout(12, 4, views=2) == (2, 1)
    with pytest.raises(ValueError, match="equal views"):
        group_layout(9, 4, views=2)


def test_grouped_bn1d_equals_bn1d_per_group():
    torch.manual_seed(0)
    head = convert_grouped_bn(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)), 4, include_1d=True).double()
    assert isinstance(head[1], GroupedBatchNorm1d)
    x = torch.randn(8, 4, dtype=torch.float64)
    y = head(x)
    ref = nn.BatchNorm1d(6).double()
    h = head[0](x)
    expect = torch.empty_like(y)
    for g in range(2):
        r = nn.BatchNorm1d(6).double()
        expect[g::2] = r(h[g::2])
    torch.testing.assert_close(y, expect)
    assert not torch.allclose(y, ref(h))
    assert convert_grouped_bn(nn.Sequential(nn.BatchNorm1d(3)), 4)[0].__class__ is nn.BatchNorm1d  # 2d only by default


def test_low_precision_input_keeps_dtype_and_layout():
    """bf16 activations with fp32 parameters (autocast): bf16 out, same layout, close to fp64."""
    new, _ = _pair(group_size=4, dtype=torch.float32)
    ref = GroupedBatchNorm2d(5, 4).double()
    ref.load_state_dict(new.state_dict())
    x = _input(16, fmt=CL, dtype=torch.float32) + 20  # a large mean: centred before scaling
    y = new(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y.double(), ref(x.bfloat16().double()), rtol=2e-2, atol=2e-2)


def test_mixes_views():
    assert mixes_views(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    assert not mixes_views(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).eval())
    assert not mixes_views(convert_grouped_bn(nn.Sequential(nn.BatchNorm2d(3)), 4))
    assert not mixes_views(nn.Linear(3, 3))
    assert mixes_views(nn.Sequential(nn.BatchNorm1d(3)))


# --------------------------------------------------------------------------- no copies
class CopyCounter(TorchDispatchMode):
    """Records every op that writes a copy of an activation-sized tensor (copy_, clone,
    _to_copy - what .contiguous(), .reshape() of a non-viewable layout and .to() dispatch to)."""

    COPIES = ("copy_", "clone", "_to_copy", "cat", "stack")

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.copies, self.ops = numel, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.ops.append(name)
        if name in self.COPIES and any(isinstance(t, torch.Tensor) and t.numel() >= self.numel
                                       for t in tree_leaves(out)):
            self.copies.append(name)
        return out


def _count_copies(bn, x):
    x = x.detach().requires_grad_(True)
    dy = torch.randn_like(x)
    with CopyCounter(x.numel()) as counter:
        y = bn(x)
        y.backward(dy)
    assert "var_mean" in counter.ops or "native_batch_norm" in counter.ops  # the mode saw the forward
    assert "addcmul_" in counter.ops or "native_batch_norm_backward" in counter.ops  # ... and the backward
    return counter.copies


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["contiguous", "channels_last"])
def test_no_copy_of_the_activation(fmt, dtype):
    new, old = _pair(c=8, group_size=4, dtype=torch.float32)
    x = _input(16, c=8, hw=4, fmt=fmt, dtype=torch.float32).to(dtype)
    assert _count_copies(new, x) == []
    with batched_views(2):
        assert _count_copies(new, x) == []
    if fmt == CL:  # the check can fail: the old implementation copies in channels_last
        assert len(_count_copies(old, x)) >= 2


def test_torch_ops_path_equals_native_path_on_contiguous_input():
    """The two implementations inside the layer agree where both apply (one view, contiguous)."""
    from fastdisco.models.grouped_bn import grouped_batch_norm

    a, _ = _pair(group_size=4)
    b, _ = _pair(group_size=4)
    x = _input(12)
    dy = torch.randn_like(x)
    ya, dxa, dwa, dba, sa = _run(a, x, dy)  # native kernel on the [N/G, G*C, H, W] view
    xb = x.clone().requires_grad_(True)
    yb = grouped_batch_norm(xb, 1, 3, b.weight, b.bias, b.running_mean, b.running_var, b.num_batches_tracked,
                            0.1, b.eps)
    yb.backward(dy)
    _assert_same((ya, dxa, dwa, dba, sa), (yb.detach(), xb.grad, b.weight.grad, b.bias.grad, b.state_dict()),
                 rtol=1e-10, atol=1e-10)
