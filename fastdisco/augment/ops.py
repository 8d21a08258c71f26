"""Batched image ops with per-sample parameters, on float images in [0, 1] shaped [B, 3, H, W].

Each op follows torchvision's functional definition (torchvision.transforms.functional on
float tensors) for one image, but takes a [B] tensor of parameters so a whole batch runs in a
few kernels on the device. tests/test_augment.py checks each one against torchvision.

The ops are written for CPU speed too (the CPU loaders run them per image, in cache): plain
arithmetic, min / max / sign / floor, no `torch.where`, comparisons or `remainder`, which are
10-30x slower than a multiply on this torch's CPU kernels. A parameter may be a [B] tensor or,
for one image, a Python float.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
_GRAY = (0.2989, 0.587, 0.114)


def _bcast(v: Tensor | float, x: Tensor) -> Tensor | float:
    """[B] -> [B, 1, 1, 1] on x's device / dtype (a float stays a float)."""
    if isinstance(v, (int, float)):
        return float(v)
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma (torchvision F.rgb_to_grayscale)."""
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    return (x * _bcast(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    # torchvision blends with the mean of the grayscale image (one scalar per image)
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _bcast(factor, x)
    return (f * x + (1.0 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    f = _bcast(factor, x)
    return (f * x + (1.0 - f) * rgb_to_grayscale(x)).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor | float) -> Tensor:
    """Rotate the HSV hue by `shift` (in [-0.5, 0.5] of a turn), per sample.

    torchvision converts to HSV (Pillow's formulas), adds the shift mod 1, and converts back.
    The same function, without the HSV round trip: with v = max, c = max - min and the hue
    sextant H6 = 6 h in [-1, 5) (before the mod), channel n of the result is
        v - c * clamp(min(k, 4 - k), 0, 1),   k = (n + H6 + 6 shift) mod 6,   n = 5, 3, 1 (R, G, B)
    (hsv2rgb's sector table in closed form, with v * s = c). Which channel is the max is read
    from sign(v - r), sign(v - g) (0 or 1 exactly), with torchvision's tie order r, g, b.
    Differences from torchvision are float rounding (< 2e-6).
    """
    r, g, b = x.unbind(dim=1)
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)
    not_r = torch.sign(v - r)                   # 1 where r is not the max
    max_b = torch.sign(v - g).mul_(not_r)       # neither r nor g is the max
    max_g = not_r - max_b
    cd = c + (1.0 - torch.sign(c))              # c, or 1 for gray pixels (no 0 / 0)
    # 6h * c on each branch: (g - b), 2c + (b - r), 4c + (r - g)
    num = (g - b).mul_(1.0 - not_r)
    num.addcmul_(b - r + 2.0 * cd, max_g).addcmul_(r - g + 4.0 * cd, max_b)
    h6 = num.div_(cd).unsqueeze(1)              # [B, 1, H, W]
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = h6 + (n + 6.0 * _bcast(shift, x))
    k = k.sub_(torch.floor(k * (1.0 / 6.0)).mul_(6.0))  # mod 6 (floor: far cheaper than remainder)
    w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v.unsqueeze(1) - c.unsqueeze(1) * w


def grayscale3(x: Tensor) -> Tensor:
    """Grayscale kept as 3 equal channels (torchvision RandomGrayscale)."""
    return rgb_to_grayscale(x).expand_as(x).contiguous()


def solarize(x: Tensor, threshold: float = 0.5) -> Tensor:
    if threshold == 0.5:  # x >= 0.5 exactly when 1 - x <= x: the same values, no where
        return torch.minimum(x, 1.0 - x)
    return torch.where(x >= threshold, 1.0 - x, x)


def hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """[B] sigmas -> [B, k] normalised 1-D kernels (torchvision _get_gaussian_kernel1d)."""
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, kernel_size, dtype=torch.float32, device=sigma.device)
    pdf = torch.exp(-0.5 * (t.view(1, -1) / sigma.float().view(-1, 1)) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable blur with reflect padding and a per-sample sigma (torchvision gaussian_blur).

    On the GPU the batch is folded into channels so one grouped conv handles every sample's own
    kernel; on the CPU each image is blurred with shifted multiply-adds (several times faster
    than a grouped conv there; see blur_shifted).
    """
    k = gaussian_kernels(sigma.to(x.device), kernel_size).to(x.dtype)  # [B, k]
    if x.device.type == "cpu":
        return torch.cat([blur_shifted(x[n : n + 1], w) for n, w in enumerate(k.tolist())])
    return blur_grouped_conv(x, k)


def blur_grouped_conv(x: Tensor, k: Tensor) -> Tensor:
    """x [B, C, H, W] blurred with sample n's 1-D kernel k[n] along both axes, reflect padding."""
    B, C, H, W = x.shape
    kernel_size = k.shape[1]
    kk = k.repeat_interleave(C, dim=0)  # [B*C, k]: one kernel per (sample, channel)
    p = kernel_size // 2
    y = F.pad(x.reshape(1, B * C, H, W), (p, p, p, p), mode="reflect")
    y = F.conv2d(y, kk.view(B * C, 1, 1, kernel_size), groups=B * C)
    y = F.conv2d(y, kk.view(B * C, 1, kernel_size, 1), groups=B * C)
    return y.view(B, C, H, W)


# Taps lighter than this (of a kernel summing to 1) are skipped on the CPU: each changes an
# output in [0, 1] by less than float32's relative resolution (2^-24), and at small sigma most
# of the 23 taps are that light (sigma 1: 13 taps remain), so the blur costs about half.
NEGLIGIBLE_TAP = 2.0 ** -24


def blur_shifted(x: Tensor, weights: list[float]) -> Tensor:
    """One kernel for all of x [N, C, H, W]: reflect pad, then a horizontal and a vertical pass of
    sum_t w_t * shifted(x), skipping negligible taps (NEGLIGIBLE_TAP)."""
    k = len(weights)
    p = k // 2
    H, W = x.shape[-2:]
    taps = [(t, w) for t, w in enumerate(weights) if w >= NEGLIGIBLE_TAP]
    y = F.pad(x, (p, p, p, p), mode="reflect")
    (t0, w0), rest = taps[0], taps[1:]
    acc = y[..., t0 : t0 + W] * w0
    for t, w in rest:
        acc.add_(y[..., t : t + W], alpha=w)
    out = acc[..., t0 : t0 + H, :] * w0
    for t, w in rest:
        out.add_(acc[..., t : t + H, :], alpha=w)
    return out


def resized_crop(imgs: Tensor, boxes: Tensor, size: int, antialias: bool = True) -> Tensor:
    """Crop box (top, left, height, width; integer pixels) of each image, resize to size x size.

    `imgs` is [B, C, Hp, Wp] (images padded to a common size are fine: boxes lie inside each
    image). Per-sample `F.interpolate(bilinear, antialias)` — exactly torchvision's
    `resized_crop` on tensors. A loop over the batch, but each call is one kernel.
    """
    out = []
    b = boxes.round().long().tolist()
    for n, (t, l, h, w) in enumerate(b):
        crop = imgs[n : n + 1, :, t : t + h, l : l + w].float()
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=antialias))
    return torch.cat(out, 0)


def resized_crop_grid(imgs: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Batched bilinear crop + resize in one `grid_sample` (no antialias).

    Same sample positions as torchvision's resized_crop(antialias=False): output pixel u maps
    to source x = left + (u + 0.5) * w / size - 0.5, clamped to the crop box's image pixels so
    zero padding of a ragged batch is never read.
    """
    B, C, Hp, Wp = imgs.shape
    bx = boxes.to(device=imgs.device, dtype=torch.float32)
    t, l, h, w = bx.unbind(1)
    u = (torch.arange(size, device=imgs.device, dtype=torch.float32) + 0.5) / size
    xs = (l.view(-1, 1) + u.view(1, -1) * w.view(-1, 1) - 0.5)
    ys = (t.view(-1, 1) + u.view(1, -1) * h.view(-1, 1) - 0.5)
    # torchvision clamps to the crop (it interpolates the cropped tensor)
    xs = torch.minimum(xs.clamp(min=0).maximum(l.view(-1, 1)), (l + w - 1).view(-1, 1))
    ys = torch.minimum(ys.clamp(min=0).maximum(t.view(-1, 1)), (t + h - 1).view(-1, 1))
    gx = xs / max(Wp - 1, 1) * 2 - 1  # align_corners=True: -1/+1 are the edge pixel centres
    gy = ys / max(Hp - 1, 1) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx.view(B, 1, size), gy.view(B, size, 1)), dim=-1)
    return F.grid_sample(imgs.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


# jitter_order ids: params' jitter_order[i] lists these indices in the order sample i applies them
JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def antialias_weights(start: Tensor, length: Tensor, out_size: int, n_in: int, scale_len: Tensor | None = None,
                      out_offset: Tensor | None = None) -> Tensor:
    """[B, out_size, n_in] rows of torch's antialiased bilinear resize (PIL's triangle filter,
    `F.interpolate(..., antialias=True)`), one matrix per sample: output pixel i of sample b reads
    the input pixels start[b] .. start[b] + length[b] - 1 (its crop; nothing else, so padding is
    never read). scale_len: the length the resize maps onto out_size-equivalent pixels, when the
    output is a window of a larger resize (eval: resize to scale_len, then crop out_offset..):
    the scale is length / scale_len and output i is resized pixel out_offset + i."""
    dev = start.device
    f = torch.float32  # exact for pixel indices (< 2^24); [B, out, n_in] temporaries half of float64's
    start, length = start.to(f), length.to(f)
    total = length if scale_len is None else scale_len.to(f)
    scale = (length / (out_size if scale_len is None else total)).view(-1, 1)       # input px per output px
    support = scale.clamp(min=1.0)                                                    # bilinear: 1, widened when reducing
    i = torch.arange(out_size, device=dev, dtype=f).view(1, -1)
    if out_offset is not None:
        i = i + out_offset.to(f).view(-1, 1)
    center = (i + 0.5) * scale                                                        # [B, out], crop-local
    lo = torch.floor(center - support + 0.5).clamp(min=0.0)                           # PIL's window
    hi = torch.minimum(torch.floor(center + support + 0.5), length.view(-1, 1))
    j = torch.arange(n_in, device=dev, dtype=f).view(1, 1, -1) - start.view(-1, 1, 1)
    w = (1.0 - ((j + 0.5 - center.unsqueeze(-1)) / support.unsqueeze(-1)).abs()).clamp(min=0.0)
    w = w * ((j >= lo.unsqueeze(-1)) & (j < hi.unsqueeze(-1)))
    return w / w.sum(-1, keepdim=True).clamp(min=1e-12)


def resized_crop_matmul(imgs: Tensor, params: dict[str, Tensor], size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One view's geometry for a whole (padded) batch as two batched matmuls: the antialiased
    bilinear resize is separable, so out[b] = Wy[b] @ img[b] @ Wx[b]^T with antialias_weights
    rows (torch's own weights: the result is F.interpolate(crop, antialias=True)'s up to float
    rounding). No per-sample loop and no read outside each crop box. `params`: a view's params
    (rrc: crop; eval: resize + crop, as crop_view). uint8 or float [B, C, Hp, Wp] -> float
    [B, C, size, size] in [0, 255]; `dtype` (e.g. float16 on a GPU: 0..255 are exact) for the
    matmuls, accumulated in float32 by the BLAS."""
    B, C, Hp, Wp = imgs.shape
    dev = imgs.device
    box = params["crop"].to(dev).float()
    if "resize" in params:  # eval: resize the whole image to (rh, rw), then crop a window of it
        src = params["src_size"].to(dev).float()
        rs = params["resize"].to(dev).float()
        zero = torch.zeros(B, device=dev)
        wy = antialias_weights(zero, src[:, 0], size, Hp, rs[:, 0], box[:, 0])
        wx = antialias_weights(zero, src[:, 1], size, Wp, rs[:, 1], box[:, 1])
    else:
        wy = antialias_weights(box[:, 0], box[:, 2], size, Hp)
        wx = antialias_weights(box[:, 1], box[:, 3], size, Wp)
    x = imgs.to(dtype)
    y = torch.matmul(wy.to(dtype).unsqueeze(1), x)                    # [B, C, size, Wp]
    return torch.matmul(y, wx.to(dtype).transpose(1, 2).unsqueeze(1)).float()  # [B, C, size, size]
