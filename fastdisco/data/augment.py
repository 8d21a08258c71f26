"""Augmentation recipes, their parameter sampler, and the batched on-device pipeline.

Every random choice of a batch (crop box, flip, colour-jitter factors and order, grayscale /
blur / solarize flags and blur sigmas) is drawn up front, as CPU tensors, from one
`torch.Generator` seeded from (seed, epoch, rank, batch). The params are returned with the
batch, so any view can be replayed exactly with `apply_view(...)`, and a run is deterministic
whatever the device. The images are then transformed on the device with the batched ops of
`fastdisco.data.augment_ops` (torchvision's definitions, per-sample parameters).

Two ways to apply the same ops: on an accelerator, batched (a few kernels per op for the whole
batch); on the CPU, image by image (`finish_cpu`, `augment_cpu`): crop, colour ops, blur,
flip and normalisation of one image run back to back while it sits in cache, with Python
floats for its parameters. The CPU path is 5-10x faster per image than the batched one on the
CPU (no 20 MB temporaries per op, no masked row gathers), and it runs where the images are: in
the torch backend's DataLoader workers, or in a small thread pool (`cpu_threads`). Both paths
follow the same definitions; tests/test_augment.py checks both against torchvision.

The CPU path's colour ops and normalisation run in one of two kernels, the same for a loader
and for apply_view (replays stay bit-exact): "fused" (default), a numba kernel that streams
each image row by row through all its ops (augment_fused; ~3x cheaper), or "torch", one torch
op per full-image pass (color_one; the reference). The fused kernel is used wherever it
applies: numba importable, float32 output; otherwise (bf16 / fp16 views, no numba) the torch
ops run. Choose with FASTDISCO_CPU_AUGMENT=fused|torch or set_cpu_kernel("fused"|"torch");
warm_up_cpu() compiles (or loads from numba's cache) the fused kernel, e.g. in a loader's
parent process before it forks workers; otherwise the first image pays for it.

Recipes (docs/design.md section 2, RECIPES.md):
  mocov2  2 views: RRC(0.2-1), jitter(0.4,0.4,0.4,0.1) p=.8, gray p=.2, blur(.1-2) p=.5, flip
  byol    2 views: RRC(0.08-1), jitter(0.4,0.4,0.2,0.1) p=.8, gray p=.2, blur p=1.0 / 0.1,
          solarize p=0 / 0.2, flip
  ssld    1 view : RRC(0.08-1) + flip (shared by teacher and student)
  linear  1 view : RRC(0.08-1) + flip
  eval    1 view : resize shorter side to int(res / 0.875), center crop res
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastdisco.data import augment_ops as ops
from fastdisco.errors import FastdiscoError

CPU_KERNELS = ("fused", "torch")
JITTER_OPS = (ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue)  # jitter_order ids
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_RATIO = 0.875  # 224 / 256


@dataclass(frozen=True)
class ViewSpec:
    """The distribution of one view. Probabilities of 0 switch an op off."""

    crop: str = "rrc"                                # "rrc" | "center" (eval)
    scale: tuple[float, float] = (0.08, 1.0)         # RRC area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)      # RRC aspect range (log-uniform)
    flip_p: float = 0.5
    jitter_p: float = 0.0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # b, c, s, hue
    gray_p: float = 0.0
    blur_p: float = 0.0
    sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


_MOCO = ViewSpec(scale=(0.2, 1.0), jitter_p=0.8, gray_p=0.2, blur_p=0.5)
_BYOL = ViewSpec(scale=(0.08, 1.0), jitter_p=0.8, jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2)
RECIPES: dict[str, tuple[ViewSpec, ...]] = {
    "mocov2": (_MOCO, _MOCO),
    "byol": (replace(_BYOL, blur_p=1.0), replace(_BYOL, blur_p=0.1, solarize_p=0.2)),
    "ssld": (ViewSpec(),),
    "linear": (ViewSpec(),),
    "eval": (ViewSpec(crop="center", flip_p=0.0),),
}


def recipe_views(recipe: str) -> tuple[ViewSpec, ...]:
    if recipe not in RECIPES:
        raise FastdiscoError(f"config key 'data.recipe': unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    return RECIPES[recipe]


def blur_kernel_size(resolution: int) -> int:
    """Odd kernel of about 10% of the side (23 at 224, as BYOL / solo-learn)."""
    k = int(round(0.1 * resolution))
    return k + 1 if k % 2 == 0 else k


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """A well-mixed 63-bit seed for one (seed, epoch, rank, batch)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, rank, batch]).generate_state(2, np.uint64)[0] >> 1)


def make_generator(seed: int, epoch: int, rank: int, batch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(batch_seed(seed, epoch, rank, batch))
    return g


# --------------------------------------------------------------------------- parameter sampling
def sample_rrc(g: torch.Generator, heights: Tensor, widths: Tensor,
               scale: tuple[float, float], ratio: tuple[float, float], tries: int = 10) -> Tensor:
    """torchvision RandomResizedCrop.get_params, batched: [B] sizes -> [B, 4] (top, left, h, w).

    Up to `tries` draws of (area, log-aspect); the first that fits wins, its position uniform;
    if none fits, the whole image clamped to the aspect range, centred.
    """
    H = heights.double().view(-1, 1)
    W = widths.double().view(-1, 1)
    B = H.shape[0]
    area = H * W
    u_area = torch.rand(B, tries, generator=g, dtype=torch.float64)
    u_ratio = torch.rand(B, tries, generator=g, dtype=torch.float64)
    u_i = torch.rand(B, tries, generator=g, dtype=torch.float64)
    u_j = torch.rand(B, tries, generator=g, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr0 + (lr1 - lr0) * u_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    i = torch.floor(u_i * (H - h + 1))
    j = torch.floor(u_j * (W - w + 1))
    first = torch.argmax(ok.int(), dim=1, keepdim=True)  # index of the first fitting try
    any_ok = ok.any(dim=1)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    box = torch.stack([pick(i), pick(j), pick(h), pick(w)], dim=1)
    # fallback: torchvision's center crop at the clamped aspect ratio
    Hs, Ws = H.squeeze(1), W.squeeze(1)
    in_ratio = Ws / Hs
    fw = torch.where(in_ratio < min(ratio), Ws, torch.where(in_ratio > max(ratio), torch.round(Hs * max(ratio)), Ws))
    fh = torch.where(in_ratio < min(ratio), torch.round(Ws / min(ratio)), Hs)
    fb = torch.stack([torch.div(Hs - fh, 2, rounding_mode="floor"), torch.div(Ws - fw, 2, rounding_mode="floor"), fh, fw], 1)
    return torch.where(any_ok.view(-1, 1), box, fb).float()


def center_box(heights: Tensor, widths: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Eval geometry: torchvision Resize(int(res/0.875)) then CenterCrop(res).

    Returns the resized sizes [B, 2] and the crop box in resized pixels [B, 4]."""
    short = int(resolution / EVAL_CROP_RATIO)
    H, W = heights.double(), widths.double()
    s = torch.minimum(H, W)
    # torchvision: the short side becomes `short`, the long side int(short * long / short_side)
    rh = torch.where(H <= W, torch.full_like(H, short), torch.floor(short * H / s))
    rw = torch.where(W <= H, torch.full_like(W, short), torch.floor(short * W / s))
    top = torch.round((rh - resolution) / 2.0)
    left = torch.round((rw - resolution) / 2.0)
    res = torch.full_like(top, resolution)
    return torch.stack([rh, rw], 1).float(), torch.stack([top, left, res, res], 1).float()


def sample_view_params(g: torch.Generator, spec: ViewSpec, heights: Tensor, widths: Tensor,
                       resolution: int) -> dict[str, Tensor]:
    """Draw every parameter of one view for a batch (CPU tensors, leading dim B)."""
    B = heights.shape[0]
    p: dict[str, Tensor] = {"src_size": torch.stack([heights, widths], 1).float()}
    if spec.crop == "rrc":
        p["crop"] = sample_rrc(g, heights, widths, spec.scale, spec.ratio)
    else:
        p["resize"], p["crop"] = center_box(heights, widths, resolution)
    p["flip"] = torch.rand(B, generator=g) < spec.flip_p
    b, c, s, h = spec.jitter
    u = torch.rand(B, 4, generator=g)
    lo = torch.tensor([1 - b, 1 - c, 1 - s, -h])
    hi = torch.tensor([1 + b, 1 + c, 1 + s, h])
    p["jitter_factors"] = lo + (hi - lo) * u          # brightness, contrast, saturation, hue
    p["jitter_order"] = torch.argsort(torch.rand(B, 4, generator=g), dim=1)  # torchvision: randperm(4)
    p["jitter"] = torch.rand(B, generator=g) < spec.jitter_p
    p["gray"] = torch.rand(B, generator=g) < spec.gray_p
    p["blur"] = torch.rand(B, generator=g) < spec.blur_p
    p["blur_sigma"] = spec.sigma[0] + (spec.sigma[1] - spec.sigma[0]) * torch.rand(B, generator=g)
    p["solarize"] = torch.rand(B, generator=g) < spec.solarize_p
    return p


def sample_params(g: torch.Generator, views: tuple[ViewSpec, ...], heights: Tensor, widths: Tensor,
                  resolution: int) -> list[dict[str, Tensor]]:
    return [sample_view_params(g, v, heights, widths, resolution) for v in views]


# --------------------------------------------------------------------------- applying
def crop_view(imgs: Tensor, params: dict[str, Tensor], resolution: int, antialias: bool = True) -> Tensor:
    """Geometry of one view on uint8 [B, 3, Hp, Wp] source images -> float [B, 3, res, res] in [0, 255]."""
    if "resize" in params:  # eval: resize whole image, then center crop
        out = []
        for n, ((rh, rw), (t, l, hh, ww)) in enumerate(zip(params["resize"].long().tolist(), params["crop"].long().tolist())):
            H, W = params["src_size"][n].long().tolist()
            x = torch.nn.functional.interpolate(imgs[n : n + 1, :, :H, :W].float(), size=(rh, rw), mode="bilinear",
                                                align_corners=False, antialias=antialias)
            out.append(x[:, :, t : t + hh, l : l + ww])
        return torch.cat(out, 0)
    if antialias:
        return ops.resized_crop(imgs, params["crop"], resolution, antialias=True)
    return ops.resized_crop_grid(imgs, params["crop"], resolution)


def _rows(mask: Tensor, device: torch.device) -> Tensor | None:
    """Indices of the True rows, made from a CPU mask (no device sync), or None if empty."""
    idx = mask.nonzero().flatten()
    return idx.to(device, non_blocking=True) if idx.numel() else None


def _apply_rows(x: Tensor, mask: Tensor, fn) -> Tensor:
    """x[rows] = fn(x[rows], rows_cpu) for the rows where the CPU mask holds."""
    rows = _rows(mask, x.device)
    if rows is None:
        return x
    cpu_rows = mask.nonzero().flatten()
    x = x.clone() if x.requires_grad else x
    x.index_copy_(0, rows, fn(x.index_select(0, rows), cpu_rows))
    return x


def color_view(x: Tensor, params: dict[str, Tensor], resolution: int) -> Tensor:
    """Photometric part of one view on float [B, 3, H, W] in [0, 1] (jitter in its drawn order,
    grayscale, blur, solarize, flip), in torchvision's order of the MoCo v2 / BYOL pipelines.
    Batched (accelerator path): each op runs once on the rows that draw it."""
    f = params["jitter_factors"]
    order = params["jitter_order"]
    jit = params["jitter"]
    if bool(jit.any()):
        for pos in range(4):
            for k, fn in enumerate(JITTER_OPS):
                # each sample runs op k at position pos of its own permutation
                sel = jit & (order[:, pos] == k)
                x = _apply_rows(x, sel, lambda xs, r, fn=fn, k=k: fn(xs, f[r, k]))
    x = _apply_rows(x, params["gray"], lambda xs, r: ops.grayscale3(xs))
    ks = blur_kernel_size(resolution)
    x = _apply_rows(x, params["blur"], lambda xs, r: ops.gaussian_blur(xs, params["blur_sigma"][r], ks))
    x = _apply_rows(x, params["solarize"], lambda xs, r: ops.solarize(xs))
    x = _apply_rows(x, params["flip"], lambda xs, r: ops.hflip(xs))
    return x


def _norm_consts(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """(1 / std, -mean / std) as [1, 3, 1, 1]: normalising is one fused multiply-add."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    return ((1.0 / std).to(device, dtype).view(1, 3, 1, 1), (-mean / std).to(device, dtype).view(1, 3, 1, 1))


def normalize(x: Tensor, dtype: torch.dtype, channels_last: bool = True) -> Tensor:
    """[0, 1] float -> (x - mean) / std in `dtype`, channels_last memory format."""
    scale, bias = _norm_consts(x.device, x.dtype)
    y = torch.addcmul(bias, x, scale).to(dtype)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y.contiguous()


# --------------------------------------------------------------------------- the CPU path
def host_params(params: dict[str, Tensor]) -> dict[str, list]:
    """A view's params as Python lists, read once per batch (no per-op tensor indexing)."""
    return {k: v.tolist() for k, v in params.items()}


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
            x = JITTER_OPS[k](x, f[k])
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


def _finish_into(out: Tensor, i: int, x: Tensor, p: dict[str, list], resolution: int,
                 norm: tuple[Tensor, Tensor], fused=None) -> None:
    """Cropped view x [1, 3, res, res] in [0, 255] (float, or uint8 when `fused` is given) ->
    colour ops -> normalised, written to out[i]. `fused`: the view's augment_fused.FusedView
    (_fused_view), tried first; the torch ops run where it is None or declines the case."""
    if fused is not None and _fused_module().finish_one(x, fused, i, out[i]):
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
            from fastdisco.data import augment_fused
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


def finish_cpu(cropped: Tensor, params: dict[str, Tensor], resolution: int, dtype: torch.dtype,
               channels_last: bool = True, run=None, out: Tensor | None = None) -> Tensor:
    """CPU path of GpuAugment.finish: image by image; `run(fn, B)` may spread them over threads.
    out: the batch to write into, else a new one. Reusing batches pays: a new 224 px float32
    view is 600 KB of fresh pages, whose first-touch faults cost about as much as the fused
    colour ops (~0.3 ms per view on a 2-core VM)."""
    p = host_params(params)
    if out is None:
        out = _empty_views(1, cropped.shape[0], resolution, dtype, channels_last)[0]
    norm = _norm_consts(torch.device("cpu"))
    fv = _fused_view(p, resolution, out.dtype)

    def one(i: int) -> None:
        if fv is not None:  # the fused kernel reads uint8 NHWC crops (dali / ffcv) as they are
            _finish_into(out, i, cropped[i : i + 1], p, resolution, norm, fv)
        else:  # planar first (dali / ffcv crops are NHWC): the torch ops run ~1.3x faster
            _finish_into(out, i, cropped[i : i + 1].contiguous().float(), p, resolution, norm)

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
    norm = _norm_consts(torch.device("cpu"))
    fvs = [_fused_view(p, resolution, out.dtype) for p, out in zip(ps, outs)]

    def one(i: int) -> None:
        for p, fv, out in zip(ps, fvs, outs):
            x = crop_one(imgs[i], p, i, resolution, antialias, crop_u8, keep_u8=fv is not None)
            _finish_into(out, i, x, p, resolution, norm, fv)

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


class GpuAugment:
    """The shared on-device part of every backend for one recipe (batched on an accelerator,
    image by image on the CPU, over `cpu_threads` threads; 0 = torch.get_num_threads())."""

    def __init__(self, recipe: str, resolution: int, dtype: torch.dtype = torch.float32,
                 channels_last: bool = True, antialias: bool = True, cpu_threads: int = 0):
        self.views = recipe_views(recipe)
        self.recipe = recipe
        self.resolution = resolution
        self.dtype = dtype
        self.channels_last = channels_last
        self.antialias = antialias
        self.cpu = CpuPool(cpu_threads or torch.get_num_threads())

    @property
    def num_views(self) -> int:
        return len(self.views)

    def sample(self, g: torch.Generator, heights: Tensor, widths: Tensor) -> list[dict[str, Tensor]]:
        return sample_params(g, self.views, heights, widths, self.resolution)

    def finish(self, cropped: Tensor, params: dict[str, Tensor], out: Tensor | None = None) -> Tensor:
        """Cropped view (uint8 or float in [0, 255], [B, 3, res, res] on device) -> normalised view.
        out (CPU only): the batch to write into."""
        if cropped.device.type == "cpu":
            return finish_cpu(cropped, params, self.resolution, self.dtype, self.channels_last, self.cpu, out)
        x = cropped.float().clamp(0.0, 255.0).div_(255.0)
        x = color_view(x, params, self.resolution)
        return normalize(x, self.dtype, self.channels_last)

    def __call__(self, imgs: Tensor, params: list[dict[str, Tensor]]) -> list[Tensor]:
        """Full pipeline on uint8 source images [B, 3, Hp, Wp] (ragged batch zero-padded)."""
        if imgs.device.type == "cpu":
            return augment_cpu(imgs, params, self.resolution, self.dtype, self.channels_last, self.antialias, self.cpu)
        return [self.finish(crop_view(imgs, p, self.resolution, self.antialias), p) for p in params]


def apply_view(imgs: Tensor, params: dict[str, Tensor], resolution: int, dtype: torch.dtype = torch.float32,
               channels_last: bool = True, antialias: bool = True, crop_u8: bool = False) -> Tensor:
    """Replay one view exactly from its params (as returned in Batch.params). A view of the
    torch backend on a CPU device is replayed with crop_u8=True (it crops in uint8)."""
    p = {k: v.cpu() for k, v in params.items()}
    if imgs.device.type == "cpu":
        return augment_cpu(imgs, [p], resolution, dtype, channels_last, antialias, crop_u8=crop_u8)[0]
    x = crop_view(imgs, p, resolution, antialias).clamp(0.0, 255.0).div_(255.0)
    x = color_view(x, p, resolution)
    return normalize(x, dtype, channels_last)
