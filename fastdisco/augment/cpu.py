"""The CPU path: image by image, every op of a view back to back while the image sits in cache.

5-10x faster per image than the batched path on the CPU (no 20 MB temporaries per op, no
masked row gathers); it runs where the images are: in the torch backend's DataLoader workers,
or in a small thread pool (`CpuPool`).

The colour ops and normalisation run in one of two kernels, the same for a loader and for
apply_view (replays stay bit-exact): "fused" (default), a numba kernel that streams each image
row by row through all its ops (`fastdisco.augment.cpu_fused`; ~3x cheaper), or "torch", one
torch op per full-image pass (`color_one`; the reference). This module is the one place that
decides: `_fused_view()` gives the fused kernel's arrays where it applies (numba importable,
float32 output), else None and the torch ops run. Choose with FASTDISCO_CPU_AUGMENT=fused|torch
or set_cpu_kernel("fused"|"torch"); warm_up_cpu() compiles (or loads from numba's cache) the
fused kernel, e.g. in a loader's parent process before it forks workers.
"""
from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdisco.augment import ops
from fastdisco.augment.params import host_params
from fastdisco.augment.recipes import blur_kernel_size, norm_consts
from fastdisco.errors import FastdiscoError

CPU_KERNELS = ("fused", "torch")


def crop_one(img: Tensor, p: dict[str, list], i: int, resolution: int, antialias: bool = True,
             u8: bool = False, keep_u8: bool = False) -> Tensor:
    """Geometry of sample i of a view on its uint8 image [3, H, W] (any layout; padding beyond the
    image's own size is ignored) -> float [1, 3, res, res] in [0, 255]. Same calls as crop_view.

    u8=True resizes in uint8, as dali and ffcv deliver their crops: torch's uint8 antialiased
    kernel (fixed point, about 3x faster than the float one on the CPU) is within 1 level of
    rounding the float result; without antialias the float result is rounded. keep_u8=True
    returns such a uint8 result as it is (the fused kernel reads uint8: no conversion pass)."""
    t, l, h, w = (int(round(v)) for v in p["crop"][i])
    if "resize" in p:  # eval: resize the whole image, then center crop
        H, W = (int(v) for v in p["src_size"][i])
        rh, rw = (int(v) for v in p["resize"][i])
        src = img[None, :, :H, :W]
        x = F.interpolate(src if u8 and antialias else src.float(), size=(rh, rw), mode="bilinear",
                          align_corners=False, antialias=antialias)
        x = x[:, :, t : t + h, l : l + w]
    elif antialias:
        crop = img[None, :, t : t + h, l : l + w]
        x = F.interpolate(crop if u8 else crop.float(), size=(resolution, resolution), mode="bilinear",
                          align_corners=False, antialias=True)
    else:
        box = torch.tensor([[float(t), float(l), float(h), float(w)]])
        x = ops.resized_crop_grid(img[None, :, : t + h, : l + w], box, resolution)
    if x.dtype == torch.uint8:  # planar before the colour ops: they run ~1.3x faster on NCHW
        return x if keep_u8 else x.contiguous().float()
    return x.clamp_(0.0, 255.0).round_() if u8 else x


def color_one(x: Tensor, p: dict[str, list], i: int, resolution: int) -> Tensor:
    """The photometric ops of sample i on one image [1, 3, H, W] in [0, 1]: color_view's ops in
    the same order, with Python floats for the parameters."""
    if p["jitter"][i]:
        f = p["jitter_factors"][i]
        for k in p["jitter_order"][i]:
            x = ops.JITTER_OPS[k](x, f[k])
    if p["gray"][i]:
        x = ops.grayscale3(x)
    if p["blur"][i]:
        w = ops.gaussian_kernels(torch.tensor([p["blur_sigma"][i]]), blur_kernel_size(resolution))
        x = ops.blur_shifted(x, w[0].tolist())
    if p["solarize"][i]:
        x = ops.solarize(x)
    if p["flip"][i]:
        x = ops.hflip(x)
    return x


def _photometric_into(out: Tensor, i: int, x: Tensor, p: dict[str, list], resolution: int,
                 norm: tuple[Tensor, Tensor], fused=None) -> None:
    """Cropped view x [1, 3, res, res] in [0, 255] (float, or uint8 when `fused` is given) ->
    colour ops -> normalised, written to out[i]. `fused`: the view's augment_fused.FusedView
    (_fused_view), tried first; the torch ops run where it is None or declines the case."""
    if fused is not None and _fused_module().photometric_one(x, fused, i, out[i]):
        return
    x = x.float().clamp(0.0, 255.0).div_(255.0)
    x = color_one(x, p, i, resolution)
    torch.addcmul(norm[1], x, norm[0], out=out[i : i + 1])  # normalise, cast and change layout in one pass


# --------------------------------------------------------------------------- the CPU kernel switch
_cpu_kernel = os.environ.get("FASTDISCO_CPU_AUGMENT", "fused")
_fused_mod = None
_fused_error: str | None = None  # why augment_fused could not be imported, if it could not


def set_cpu_kernel(name: str) -> str:
    """Select the CPU path's kernel ("fused" | "torch"); returns the previous choice."""
    global _cpu_kernel
    if name not in CPU_KERNELS:
        raise FastdiscoError(f"CPU augmentation kernel {name!r}: expected one of {', '.join(CPU_KERNELS)}")
    prev, _cpu_kernel = _cpu_kernel, name
    return prev


def _fused_module():
    """augment_fused if the fused kernel is selected and numba imports, else None. Imported on
    first use: numba's import (~0.5 s) is not paid by processes that never augment on the CPU."""
    global _fused_mod, _fused_error
    if _cpu_kernel not in CPU_KERNELS:
        raise FastdiscoError(f"FASTDISCO_CPU_AUGMENT={_cpu_kernel!r}: expected one of {', '.join(CPU_KERNELS)}")
    if _cpu_kernel != "fused":
        return None
    if _fused_mod is None and _fused_error is None:
        try:
            from fastdisco.augment import cpu_fused as augment_fused
            _fused_mod = augment_fused
        except (ImportError, RuntimeError) as e:  # no numba, or no directory numba can cache in
            _fused_error = f"{type(e).__name__}: {e}"
            warnings.warn(f"fastdisco: the fused CPU augmentation kernel is unavailable ({_fused_error}); "
                          "running the torch ops (~3x slower)", stacklevel=2)
    return _fused_mod


def cpu_kernel(dtype: torch.dtype = torch.float32) -> str:
    """The kernel the CPU path uses for views of `dtype`: "fused" or "torch"."""
    return "fused" if dtype == torch.float32 and _fused_module() is not None else "torch"


def warm_up_cpu() -> str:
    """Compile (or load from numba's cache) the fused kernel now, e.g. in a loader's parent
    process before DataLoader workers fork and inherit it. Returns cpu_kernel()."""
    m = _fused_module()
    if m is not None:
        m.warm_up()
    return cpu_kernel()


def _fused_view(p: dict[str, list], resolution: int, dtype: torch.dtype):
    """The fused kernel's arrays for one view's host params, or None for the torch ops."""
    m = _fused_module() if dtype == torch.float32 else None
    return m.FusedView(p, resolution) if m is not None else None


def _empty_views(n: int, b: int, resolution: int, dtype: torch.dtype, channels_last: bool) -> list[Tensor]:
    """n output batches [b, 3, res, res]; in a DataLoader worker they live in shared memory from
    the start (as default_collate does), so handing them to the main process copies nothing."""
    shape = (b, 3, resolution, resolution)
    hw = resolution * resolution
    stride = (3 * hw, 1, 3 * resolution, 3) if channels_last else (3 * hw, hw, resolution, 1)
    shared = torch.utils.data.get_worker_info() is not None
    out = []
    for _ in range(n):
        if shared:
            st = torch.UntypedStorage._new_shared(b * 3 * hw * dtype.itemsize)
            out.append(torch.empty(0, dtype=dtype).set_(st, 0, shape, stride))
        else:
            out.append(torch.empty_strided(shape, stride, dtype=dtype))
    return out


def photometric_cpu(cropped: Tensor, params: dict[str, Tensor], resolution: int, dtype: torch.dtype,
               channels_last: bool = True, run=None, out: Tensor | None = None) -> Tensor:
    """CPU path of Augment.photometric: image by image; `run(fn, B)` may spread them over threads.
    out: the batch to write into, else a new one. Reusing batches pays: a new 224 px float32
    view is 600 KB of fresh pages, whose first-touch faults cost about as much as the fused
    colour ops (~0.3 ms per view on a 2-core VM)."""
    p = host_params(params)
    if out is None:
        out = _empty_views(1, cropped.shape[0], resolution, dtype, channels_last)[0]
    norm = norm_consts(torch.device("cpu"))
    fv = _fused_view(p, resolution, out.dtype)

    def one(i: int) -> None:
        if fv is not None:  # the fused kernel reads uint8 NHWC crops (dali / ffcv) as they are
            _photometric_into(out, i, cropped[i : i + 1], p, resolution, norm, fv)
        else:  # planar first (dali / ffcv crops are NHWC): the torch ops run ~1.3x faster
            _photometric_into(out, i, cropped[i : i + 1].contiguous().float(), p, resolution, norm)

    (run or _run_inline)(one, cropped.shape[0])
    return out


def augment_cpu(imgs: Sequence[Tensor], params: list[dict[str, Tensor]], resolution: int, dtype: torch.dtype,
                channels_last: bool = True, antialias: bool = True, run=None, crop_u8: bool = False,
                outs: list[Tensor] | None = None) -> list[Tensor]:
    """CPU path of the whole pipeline: uint8 images [3, H, W] (a list, or a padded batch) -> views.
    Each image goes through every view (crop, colour ops, normalisation) while in cache.
    crop_u8: crop + resize in uint8 (crop_one); the torch loader's CPU path.
    outs: the V output batches to write into (the torch loader's shared slots), else new ones."""
    ps = [host_params(p) for p in params]
    if outs is None:
        outs = _empty_views(len(params), len(imgs), resolution, dtype, channels_last)
    norm = norm_consts(torch.device("cpu"))
    fvs = [_fused_view(p, resolution, out.dtype) for p, out in zip(ps, outs)]

    def one(i: int) -> None:
        for p, fv, out in zip(ps, fvs, outs):
            x = crop_one(imgs[i], p, i, resolution, antialias, crop_u8, keep_u8=fv is not None)
            _photometric_into(out, i, x, p, resolution, norm, fv)

    (run or _run_inline)(one, len(imgs))
    return outs


def _run_inline(fn, n: int) -> None:
    """Images one after another with one torch thread, as in the pool: a reduction (contrast's
    mean) then sums in the same order whatever the caller's thread count, so a replayed view is
    bit-identical to the loader's."""
    prev = torch.get_num_threads()
    if prev != 1:
        torch.set_num_threads(1)
    try:
        for i in range(n):
            fn(i)
    finally:
        if prev != 1:
            torch.set_num_threads(prev)


class CpuPool:
    """A few threads that each run images with one torch thread (torch ops release the GIL, and a
    per-thread torch.set_num_threads(1) keeps OpenMP from oversubscribing the cores)."""

    def __init__(self, threads: int):
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self, fn, n: int) -> None:
        if self.threads <= 1 or n <= 1:
            return _run_inline(fn, n)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fastdisco-aug",
                                                initializer=torch.set_num_threads, initargs=(1,))
        # strided chunks, one per thread: fewer hand-offs than one task per image
        chunks = [range(k, n, self.threads) for k in range(self.threads)]
        # grad / inference mode is thread-local: run the chunks in the caller's, so outputs made
        # under the caller's inference_mode (eval feature extraction) may be written in place
        mode = torch.is_inference_mode_enabled()

        def chunk(c: range) -> None:
            with torch.inference_mode(mode):
                for i in c:
                    fn(i)

        caller_threads = torch.get_num_threads()
        for f in [self._pool.submit(chunk, c) for c in chunks]:
            f.result()
        if torch.get_num_threads() != caller_threads:  # a torch build whose thread count is global
            torch.set_num_threads(caller_threads)

    def __getstate__(self):
        return {"threads": self.threads}

    def __setstate__(self, st):
        self.__init__(st["threads"])


