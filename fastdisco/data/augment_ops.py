"""Batched image ops with per-sample parameters, on float images in [0, 1] shaped [B, 3, H, W].

Each op follows torchvision's functional definition (torchvision.transforms.functional on
float tensors) for one image, but takes a [B] tensor of parameters so a whole batch runs in a
few kernels on the device. tests/test_augment.py checks each one against torchvision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
_GRAY = (0.2989, 0.587, 0.114)


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, 1] on x's device / dtype."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma (torchvision F.rgb_to_grayscale)."""
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _bcast(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    # torchvision blends with the mean of the grayscale image (one scalar per image)
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _bcast(factor, x)
    return (f * x + (1.0 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    f = _bcast(factor, x)
    return (f * x + (1.0 - f) * rgb_to_grayscale(x)).clamp_(0.0, 1.0)


def _rgb2hsv(x: Tensor) -> Tensor:
    # same formulation as torchvision's _rgb2hsv (itself Pillow's), so hue shifts match
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv2rgb(hsv: Tensor) -> Tensor:
    # closed form f(n) = v - v*s*clamp(min(k, 4-k), 0, 1), k = (n + 6h) mod 6: the same
    # piecewise-linear function as torchvision's sector table, without a gather
    h, s, v = hsv.unbind(dim=1)
    n = torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h.unsqueeze(1) * 6.0, 6.0)
    w = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v.unsqueeze(1) - v.unsqueeze(1) * s.unsqueeze(1) * w


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """shift in [-0.5, 0.5] of a full turn, per sample."""
    hsv = _rgb2hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.to(x).view(-1, 1, 1), 1.0)
    return _hsv2rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def grayscale3(x: Tensor) -> Tensor:
    """Grayscale kept as 3 equal channels (torchvision RandomGrayscale)."""
    return rgb_to_grayscale(x).expand_as(x).contiguous()


def solarize(x: Tensor, threshold: float = 0.5) -> Tensor:
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

    The batch is folded into channels so one grouped conv handles every sample's own kernel.
    """
    B, C, H, W = x.shape
    k = gaussian_kernels(sigma.to(x.device), kernel_size).to(x.dtype)  # [B, k]
    kk = k.repeat_interleave(C, dim=0)  # [B*C, k]: one kernel per (sample, channel)
    p = kernel_size // 2
    y = F.pad(x.reshape(1, B * C, H, W), (p, p, p, p), mode="reflect")
    y = F.conv2d(y, kk.view(B * C, 1, 1, kernel_size), groups=B * C)
    y = F.conv2d(y, kk.view(B * C, 1, kernel_size, 1), groups=B * C)
    return y.view(B, C, H, W)


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
