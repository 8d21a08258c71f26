"""The photometric ops of one CPU view fused into one numba kernel (augment.color_one + normalise).

The torch CPU path (augment._photometric_into) runs each op as a full-image pass: clamp, divide,
up to four jitter ops, grayscale, a blur of 2 x 13-23 shifted multiply-adds, solarize, flip,
normalise, each reading and writing 600 KB. Here one image is streamed row by row instead:
a row of the three channels (3 x 224 floats, L1-resident) goes through every op in the
view's order, each op a short branch-free loop that LLVM vectorises, and the row is written
normalised straight into the output batch (channels_last or NCHW). Two things need more than
one row:
  * contrast blends with the mean gray of the whole image *after the jitter ops before it*:
    a first pass applies those ops, keeps the rows in a scratch image and sums the gray;
  * blur: the horizontal pass runs with the row ops (into the scratch image), the vertical
    pass reads 2p + 1 scratch rows per output row and finishes (solarize, flip, normalise).

Same arithmetic as the torch ops, in float32, op for op: where torch's CPU kernels fuse a
multiply-add (Tensor.add_(alpha=), addcmul: one vfmadd, one rounding) the kernel uses fma too,
elsewhere it rounds after each operation (numba's default: no fastmath, no contraction), so
results equal the torch path to the last bit except where a reduction's summation order
differs (contrast's mean, summed here per column in float64, is ~1 ulp off torch's float32
cascade). tests/test_augment_fused.py states the tolerances. Sums run in a fixed order, so a
view is bit-identical whatever the thread: augment.apply_view replays loader views exactly.

All kernels release the GIL (nogil), so augment.CpuPool's threads run images in parallel.
One signature serves every input (float32 / uint8, planar / NHWC, either output layout); it
compiles on first use (~7 s on one core) and is cached on disk (cache=True: next to this
file, or in ~/.cache/numba where the package is read-only; numba picks; where neither is
writable this module fails to import and augment falls back to the torch ops). warm_up()
compiles / loads it, e.g. in a loader's parent process before it forks DataLoader workers,
which then inherit the compiled code.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
from numba import njit, types
from numba.extending import intrinsic
from torch import Tensor

from fastdisco.augment import ops

# float32 constants: a Python float in a numba expression would promote it to float64
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_F4 = np.float32(4.0)
_F6 = np.float32(6.0)
_INV6 = np.float32(1.0 / 6.0)         # torch multiplies by the float32 of 1/6
_F255 = np.float32(255.0)
_G0, _G1, _G2 = (np.float32(v) for v in ops._GRAY)

# FusedView.consts[i] columns: jitter factors, with (1 - f) rounded as torch rounds it
C_BRIGHT, C_CONTRAST, C_CONTRAST_OMF, C_SAT, C_SAT_OMF, C_HUE_R, C_HUE_G, C_HUE_B = range(8)
# FusedView.flags[i] columns
F_JITTER, F_GRAY, F_BLUR, F_SOLARIZE, F_FLIP = range(5)
OP_CONTRAST = 1  # jitter_order id of adjust_contrast (ops.JITTER_OPS)


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma; a vfmadd on x86), as torch's add(alpha) / addcmul."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


# --------------------------------------------------------------------------- row ops
# A row is three 1-D float32 views R, G, B (made once per image) of the image's width W.
# Two rules keep the loops fast: loops run over range(W) and index with x, or with an
# unsigned offset + x (numba wraps negative indices, and an index LLVM cannot prove >= 0, such
# as p + x or W - 1 - x, keeps a loop scalar, ~8x slower); and no array view is made per row
# (each costs its construction and refcounting: dropping ~10 per row made the blur 1.5x faster).
_U = np.uint64


@njit(nogil=True, cache=True)
def _clamp01(v):
    return min(max(v, _F0), _F1)


@njit(nogil=True, cache=True)
def _gray(r, g, b):
    return (_G0 * r + _G1 * g) + _G2 * b  # torch: (0.2989 r + 0.587 g) + 0.114 b


@njit(nogil=True, cache=True)
def _to01(v):
    return min(max(np.float32(v), _F0), _F255) / _F255  # clamp, then a true division (torch's div_)


@njit(nogil=True, cache=True)
def _load_row(src, flat, hwc, y, R, G, B):
    """Row y of the [0, 255] input into R, G, B in [0, 1]: src [3, H, W], or if hwc its
    pixels interleaved r g b r g b ... in flat ([H, W, 3] flattened: the loads vectorise)."""
    W = R.shape[0]
    if hwc:
        o = _U(3 * W * y)
        for x in range(W):
            j = o + _U(3 * x)
            R[x] = _to01(flat[j])
            G[x] = _to01(flat[j + _U(1)])
            B[x] = _to01(flat[j + _U(2)])
    else:
        for x in range(W):
            R[x] = _to01(src[0, y, x])
        for x in range(W):
            G[x] = _to01(src[1, y, x])
        for x in range(W):
            B[x] = _to01(src[2, y, x])


@njit(nogil=True, cache=True)
def _brightness(R, G, B, f):
    for x in range(R.shape[0]):
        R[x] = _clamp01(R[x] * f)
        G[x] = _clamp01(G[x] * f)
        B[x] = _clamp01(B[x] * f)


@njit(nogil=True, cache=True)
def _contrast(R, G, B, f, blend):
    """blend = (1 - f) * mean gray, one float32 per image (torch: f * x + (1 - f) * mean)."""
    for x in range(R.shape[0]):
        R[x] = _clamp01(f * R[x] + blend)
        G[x] = _clamp01(f * G[x] + blend)
        B[x] = _clamp01(f * B[x] + blend)


@njit(nogil=True, cache=True)
def _saturation(R, G, B, f, omf):
    for x in range(R.shape[0]):
        m = omf * _gray(R[x], G[x], B[x])
        R[x] = _clamp01(f * R[x] + m)
        G[x] = _clamp01(f * G[x] + m)
        B[x] = _clamp01(f * B[x] + m)


@njit(nogil=True, cache=True)
def _hue_channel(h6, kn, v, c):
    """augment.ops.adjust_hue's closed form for one channel: v - c * clamp(min(k, 4 - k), 0, 1),
    k = (h6 + kn) mod 6, kn = n + 6 shift rounded to float32 as torch adds it."""
    k = h6 + kn
    k = k - np.floor(k * _INV6) * _F6
    return v - c * _clamp01(min(k, _F4 - k))


@njit(nogil=True, cache=True)
def _hue(R, G, B, k_r, k_g, k_b):
    for x in range(R.shape[0]):
        r, g, b = R[x], G[x], B[x]
        v = max(max(r, g), b)
        c = v - min(min(r, g), b)
        cd = c if c > _F0 else _F1  # gray pixel: hue 0, no 0 / 0
        # 6 h * c by which channel is the max, ties in torchvision's order r, g, b
        if v == r:
            num = g - b
        elif v == g:
            num = (b - r) + _F2 * cd
        else:
            num = (r - g) + _F4 * cd
        h6 = num / cd
        R[x] = _hue_channel(h6, k_r, v, c)
        G[x] = _hue_channel(h6, k_g, v, c)
        B[x] = _hue_channel(h6, k_b, v, c)


@njit(nogil=True, cache=True)
def _grayscale(R, G, B):
    for x in range(R.shape[0]):
        v = _gray(R[x], G[x], B[x])
        R[x] = v
        G[x] = v
        B[x] = v


@njit(nogil=True, cache=True)
def _jitter(R, G, B, order, first, last, k, blend):
    """Jitter ops order[first:last] of one sample (k: its consts; contrast's blend from the caller)."""
    for pos in range(first, last):
        op = order[pos]
        if op == 0:
            _brightness(R, G, B, k[C_BRIGHT])
        elif op == 1:
            _contrast(R, G, B, k[C_CONTRAST], blend)
        elif op == 2:
            _saturation(R, G, B, k[C_SAT], k[C_SAT_OMF])
        else:
            _hue(R, G, B, k[C_HUE_R], k[C_HUE_G], k[C_HUE_B])


@njit(nogil=True, cache=True)
def _solarize(R, G, B):
    for x in range(R.shape[0]):  # at 0.5, as augment.ops.solarize: min(x, 1 - x)
        R[x] = min(R[x], _F1 - R[x])
        G[x] = min(G[x], _F1 - G[x])
        B[x] = min(B[x], _F1 - B[x])


@njit(nogil=True, cache=True)
def _col(W, x, flip):
    """Output column of input column x: W - 1 - x if flip (unsigned: see the rules above)."""
    return _U(W - 1 - x) if flip else _U(x)


@njit(nogil=True, cache=True)
def _write_row(R, G, B, out, flat, hwc, y, solarize, flip, norm):
    """A row in [0, 1] -> solarize, flip, (v - mean) / std into row y of the output: out
    [3, H, W], or if hwc the interleaved flat ([H, W, 3] flattened). norm = (1 / std,
    -mean / std) as float32 [6]; torch's addcmul(bias, x, 1 / std) is one fma."""
    if solarize:
        _solarize(R, G, B)
    W = R.shape[0]
    s0, s1, s2, b0, b1, b2 = norm[0], norm[1], norm[2], norm[3], norm[4], norm[5]
    if hwc:
        o = _U(3 * W * y)
        for x in range(W):
            j = o + _U(3) * _col(W, x, flip)
            flat[j] = _fma(R[x], s0, b0)
            flat[j + _U(1)] = _fma(G[x], s1, b1)
            flat[j + _U(2)] = _fma(B[x], s2, b2)
    else:
        for x in range(W):
            out[0, y, _col(W, x, flip)] = _fma(R[x], s0, b0)
        for x in range(W):
            out[1, y, _col(W, x, flip)] = _fma(G[x], s1, b1)
        for x in range(W):
            out[2, y, _col(W, x, flip)] = _fma(B[x], s2, b2)


@njit(nogil=True, cache=True)
def _reflect(j, n):
    """Index j in [-(n - 1), 2n - 1) of a reflect-padded axis of length n (F.pad mode='reflect')."""
    if j < 0:
        return -j
    if j >= n:
        return 2 * (n - 1) - j
    return j


# Both blur passes compute, per output, w[t0] * x[t0] then fma(x[t], w[t], .) for t = t0+1 ..
# t1-1 in that order (blur_shifted's; taps outside [t0, t1) are negligible), as sweeps over a
# row (x[t]: the input shifted by t) that LLVM vectorises. Four taps per sweep: a quarter of
# the accumulator's loads and stores, 1.7x faster than one.
@njit(nogil=True, cache=True)
def _blur_h(padded, c, p, w, t0, t1, dst, y):
    """Horizontal pass of channel c's row (at padded[c, p : p + W]) into dst[c, y], reflect padding."""
    W = dst.shape[2]
    for d in range(1, p + 1):
        padded[c, p - d] = padded[c, p + d]
        padded[c, p + W - 1 + d] = padded[c, p + W - 1 - d]
    a, w0 = _U(t0), w[t0]
    for x in range(W):
        dst[c, y, x] = padded[c, a + _U(x)] * w0
    t = t0 + 1
    while t + 4 <= t1:
        a, b, e, f = _U(t), _U(t + 1), _U(t + 2), _U(t + 3)
        w0, w1, w2, w3 = w[t], w[t + 1], w[t + 2], w[t + 3]
        for x in range(W):
            u = _U(x)
            acc = _fma(padded[c, a + u], w0, dst[c, y, x])
            acc = _fma(padded[c, b + u], w1, acc)
            acc = _fma(padded[c, e + u], w2, acc)
            dst[c, y, x] = _fma(padded[c, f + u], w3, acc)
        t += 4
    while t < t1:
        a, w0 = _U(t), w[t]
        for x in range(W):
            dst[c, y, x] = _fma(padded[c, a + _U(x)], w0, dst[c, y, x])
        t += 1


@njit(nogil=True, cache=True)
def _blur_v(hb, c, p, w, t0, t1, y, dst):
    """Vertical pass for output row y of channel c from the horizontal result hb [3, H, W] into
    dst[c] (reflect padding by row index: no padded copy)."""
    H, W = hb.shape[1], hb.shape[2]
    r, w0 = _reflect(y + t0 - p, H), w[t0]
    for x in range(W):
        dst[c, x] = hb[c, r, x] * w0
    t = t0 + 1
    while t + 4 <= t1:
        r0, r1 = _reflect(y + t - p, H), _reflect(y + t + 1 - p, H)
        r2, r3 = _reflect(y + t + 2 - p, H), _reflect(y + t + 3 - p, H)
        w0, w1, w2, w3 = w[t], w[t + 1], w[t + 2], w[t + 3]
        for x in range(W):
            acc = _fma(hb[c, r0, x], w0, dst[c, x])
            acc = _fma(hb[c, r1, x], w1, acc)
            acc = _fma(hb[c, r2, x], w2, acc)
            dst[c, x] = _fma(hb[c, r3, x], w3, acc)
        t += 4
    while t < t1:
        r, w0 = _reflect(y + t - p, H), w[t]
        for x in range(W):
            dst[c, x] = _fma(hb[c, r, x], w0, dst[c, x])
        t += 1


# --------------------------------------------------------------------------- one image
@njit(nogil=True, cache=True)
def _photometric(srcf, srcu, u8, src_hwc, out, out_hwc, i, order, consts, flags, weights, taps, norm):
    """Sample i of a view: its crop in [0, 255], srcu (uint8) if u8 else srcf (float32), each
    [H, W, 3] if src_hwc else [3, H, W] (the unused one is empty: one compiled signature for
    both dtypes) -> normalised into out ([H, W, 3] if out_hwc else [3, H, W]). The other
    arguments are the batch's FusedView arrays."""
    H = out.shape[0] if out_hwc else out.shape[1]
    W = out.shape[1] if out_hwc else out.shape[2]
    k, o = consts[i], order[i]
    jitter = flags[i, F_JITTER] != 0
    gray = flags[i, F_GRAY] != 0
    blur = flags[i, F_BLUR] != 0
    solarize = flags[i, F_SOLARIZE] != 0
    flip = flags[i, F_FLIP] != 0
    p = weights.shape[1] // 2 if blur else 0
    t0, t1, w = taps[i, 0], taps[i, 1], weights[i]
    fu, ff, oflat = srcu.reshape(-1), srcf.reshape(-1), out.reshape(-1)
    rows = np.empty((3, W + 2 * p), np.float32)  # padded for the horizontal blur
    R, G, B = rows[0, p : p + W], rows[1, p : p + W], rows[2, p : p + W]
    # contrast needs the mean gray after the ops before it: pass 1 runs them and keeps the rows
    pre = -1
    if jitter:
        for pos in range(4):
            if o[pos] == OP_CONTRAST:
                pre = pos
    blend = _F0
    scratch = np.empty((3, H if (pre > 0 or blur) else 0, W), np.float32)
    if pre >= 0:
        colsum = np.zeros(W, np.float64)  # per column, rows in order: deterministic, vectorised
        for y in range(H):
            if u8:
                _load_row(srcu, fu, src_hwc, y, R, G, B)
            else:
                _load_row(srcf, ff, src_hwc, y, R, G, B)
            _jitter(R, G, B, o, 0, pre, k, _F0)
            for x in range(W):
                colsum[x] += np.float64(_gray(R[x], G[x], B[x]))
            if pre > 0:
                for x in range(W):
                    scratch[0, y, x] = R[x]
                    scratch[1, y, x] = G[x]
                    scratch[2, y, x] = B[x]
        blend = k[C_CONTRAST_OMF] * np.float32(colsum.sum() / (H * W))
    for y in range(H):
        if pre > 0:
            for x in range(W):
                R[x] = scratch[0, y, x]
                G[x] = scratch[1, y, x]
                B[x] = scratch[2, y, x]
        elif u8:
            _load_row(srcu, fu, src_hwc, y, R, G, B)
        else:
            _load_row(srcf, ff, src_hwc, y, R, G, B)
        if jitter:
            _jitter(R, G, B, o, max(pre, 0), 4, k, blend)
        if gray:
            _grayscale(R, G, B)
        if blur:  # row y of scratch was read above: the horizontal result may replace it
            for c in range(3):
                _blur_h(rows, c, p, w, t0, t1, scratch, y)
        else:
            _write_row(R, G, B, out, oflat, out_hwc, y, solarize, flip, norm)
    if blur:
        R, G, B = rows[0, :W], rows[1, :W], rows[2, :W]
        for y in range(H):
            for c in range(3):
                _blur_v(scratch, c, p, w, t0, t1, y, rows)
            _write_row(R, G, B, out, oflat, out_hwc, y, solarize, flip, norm)


# --------------------------------------------------------------------------- Python side
class FusedView:
    """One view's params for the whole batch as the kernel's arrays (built once per batch)."""

    __slots__ = ("order", "consts", "flags", "weights", "taps")

    def __init__(self, p: dict[str, list], resolution: int):
        from fastdisco.augment.recipes import blur_kernel_size

        B = len(p["flip"])
        f = np.asarray(p["jitter_factors"], np.float64).reshape(B, 4)
        f32 = lambda v: v.astype(np.float32)  # noqa: E731
        consts = np.empty((B, 8), np.float32)
        consts[:, C_BRIGHT] = f32(f[:, 0])
        consts[:, C_CONTRAST] = f32(f[:, 1])
        consts[:, C_CONTRAST_OMF] = f32(1.0 - f[:, 1])  # torch: (1.0 - f) in double, then float32
        consts[:, C_SAT] = f32(f[:, 2])
        consts[:, C_SAT_OMF] = f32(1.0 - f[:, 2])
        shift6 = f32(6.0 * f[:, 3])  # torch: n + 6 * shift, the scalar rounded to float32 first
        for col, n in ((C_HUE_R, 5.0), (C_HUE_G, 3.0), (C_HUE_B, 1.0)):
            consts[:, col] = np.float32(n) + shift6
        self.consts = consts
        self.order = np.asarray(p["jitter_order"], np.int64).reshape(B, 4)
        self.flags = np.stack([np.asarray(p[k], np.uint8) for k in ("jitter", "gray", "blur", "solarize", "flip")], 1)
        ks = blur_kernel_size(resolution)
        # augment.ops.gaussian_kernels for the whole batch at once: row for row the same values
        # as color_one's one-sigma calls (tested), 50x cheaper
        self.weights = ops.gaussian_kernels(torch.tensor(p["blur_sigma"], dtype=torch.float32), ks).numpy()
        heavy = self.weights >= ops.NEGLIGIBLE_TAP  # a contiguous run of taps: the kernel is unimodal
        self.taps = np.stack([heavy.argmax(1), ks - heavy[:, ::-1].argmax(1)], 1).astype(np.int64)


def _norm() -> np.ndarray:
    from fastdisco.augment.recipes import norm_consts

    scale, bias = norm_consts(torch.device("cpu"))
    return np.concatenate([scale.flatten().numpy(), bias.flatten().numpy()])


_NORM: np.ndarray | None = None
_EMPTY_F = np.empty((0, 0, 0), np.float32)
_EMPTY_U = np.empty((0, 0, 0), np.uint8)


def _hwc_or_chw(a: np.ndarray) -> tuple[bool, np.ndarray] | None:
    """A [3, H, W] array as (True, its [H, W, 3] view) if its memory is channels_last, (False,
    itself) if contiguous, else None. (numpy's flags: a few times cheaper than torch's checks.)"""
    if a.flags.c_contiguous:
        return False, a
    t = a.transpose(1, 2, 0)
    return (True, t) if t.flags.c_contiguous else None


def photometric_one(x: Tensor, fv: FusedView, i: int, out_i: Tensor) -> bool:
    """Sample i's colour ops and normalisation of x (its cropped view in [0, 255]: float32 or
    uint8 [1, 3, H, W] / [3, H, W], any strides) into out_i ([3, H, W] float32, channels_last
    or contiguous). False (nothing written) when the case is not one the kernel handles."""
    global _NORM
    if x.dim() == 4:
        x = x[0]
    if x.dtype not in (torch.float32, torch.uint8) or out_i.dtype != torch.float32 or x.device.type != "cpu":
        return False
    if x.shape != out_i.shape or x.shape[0] != 3:
        return False
    if fv.flags[i, F_BLUR] and fv.weights.shape[1] // 2 >= min(x.shape[1], x.shape[2]):
        return False  # reflect padding needs pad < side (torch's F.pad would raise)
    dst = _hwc_or_chw(out_i.numpy())
    if dst is None:
        return False
    src = _hwc_or_chw(x.numpy()) or (False, x.contiguous().numpy())  # e.g. an eval crop's slice
    u8 = x.dtype == torch.uint8
    if _NORM is None:
        _NORM = _norm()
    if not _warm:
        warm_up()
    _photometric(_EMPTY_F if u8 else src[1], src[1] if u8 else _EMPTY_U, u8, src[0], dst[1], dst[0], i,
            fv.order, fv.consts, fv.flags, fv.weights, fv.taps, _NORM)
    return True


_warm_lock = threading.Lock()
_warm = False


def warm_up() -> None:
    """Compile the kernel (one signature) on a tiny image with every op on: seconds on a
    machine's first call, then a load from numba's cache. Call it in a loader's parent process
    before DataLoader workers fork: they inherit the compiled code."""
    global _warm
    with _warm_lock:
        if _warm:
            return
        res = 8
        p = {"flip": [True], "jitter_factors": [[1.1, 0.9, 1.2, 0.05]], "jitter_order": [[3, 1, 0, 2]],
             "jitter": [True], "gray": [True], "blur": [True], "blur_sigma": [1.0], "solarize": [True]}
        fv = FusedView(p, res)
        out = np.empty((3, res, res), np.float32)
        _photometric(np.full((3, res, res), 100.0, np.float32), _EMPTY_U, False, False, out, False, 0,
                fv.order, fv.consts, fv.flags, fv.weights, fv.taps, _norm())
        _warm = True
