"""Decode each JPEG only as large as its crops need, and crop before anything is batched.

The torch backend draws a batch's augmentation params from the images' full sizes, read from the
JPEG headers (so the crop boxes' distribution is exactly that of a full decode), and then decodes
each image at the smallest libjpeg DCT scale (1, 1/2, 1/4, 1/8) at which every crop of the image
still spans at least `resolution` pixels (eval: at which the image is still at least its resized
size): the crops are then downscaled from the reduced image as they were from the full one. The
boxes are mapped to the decoded image's pixels (`local_params`; unchanged at scale 1, so views of
images decoded at full size are bit-identical to a full decode).

On a CPU this saves most of the decode for large sources; on the way to a device it means no
zero-padded full-size batch is ever built: `crop_regions` hands over each view's crop region
(bounded by the crop, not by the source), padded to the batch's largest region.

Decoded pixels are capped per image (dataset.images.MAX_DECODED_PIXELS): a huge JPEG decodes at
a reduced scale that fits, and one that no scale fits is an error naming its file and sample.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from fastdisco.dataset.images import DCT_SCALES, BadImage, decode_rgb_scaled, jpeg_size, pixel_cap_scale
from fastdisco.errors import FastdiscoError


def header_sizes(jpegs: list[bytes]) -> tuple[Tensor, Tensor]:
    """[B] heights and widths from the JPEG headers (no decode)."""
    hw = [jpeg_size(j) for j in jpegs]
    return torch.tensor([h for h, _ in hw]), torch.tensor([w for _, w in hw])


def decode_scales(params: list[dict[str, Tensor]], resolution: int, enabled: bool = True) -> Tensor:
    """[B] int: per image, the largest DCT scale at which every view's crop keeps >= resolution
    pixels on its short side (eval: the image keeps >= its resized size). 1 when not enabled."""
    B = params[0]["src_size"].shape[0]
    if not enabled:
        return torch.ones(B, dtype=torch.int64)
    room = torch.full((B,), float("inf"), dtype=torch.float64)  # the largest scale each view allows
    for p in params:
        if "resize" in p:
            r = (p["src_size"].double() / p["resize"].double()).min(1).values
        else:
            r = p["crop"][:, 2:].double().min(1).values / resolution
        room = torch.minimum(room, r)
    s = torch.ones(B, dtype=torch.int64)
    for d in DCT_SCALES[1:]:
        s = torch.where(room >= d, torch.full_like(s, d), s)
    return s


def decode_one(jpeg: bytes, scale: int, height: int, width: int, where: str) -> tuple[Tensor, int]:
    """One JPEG at `scale`, raised where the pixel cap demands -> (uint8 [3, h, w] planar view of
    the decoded HWC pixels, the scale it was decoded at). `where` names the file and sample."""
    try:
        needed = pixel_cap_scale(width, height, True)
    except BadImage as e:
        raise FastdiscoError(f"{where}: {e}") from None
    try:
        arr, got = decode_rgb_scaled(jpeg, max(scale, needed))
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
        raise FastdiscoError(f"{where}: cannot decode the JPEG ({type(e).__name__}: {str(e)[:120]})") from None
    if got < needed:
        raise FastdiscoError(f"{where}: too many pixels to decode ({width}x{height}) and libjpeg cannot "
                             "decode this JPEG at a reduced size")
    with warnings.catch_warnings():  # Pillow's buffer is read-only and is only ever read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr).permute(2, 0, 1), got


def local_params(params: list[dict[str, Tensor]], scales: Tensor, dec_h: Tensor, dec_w: Tensor
                 ) -> list[dict[str, Tensor]]:
    """Each view's params in the pixels of the images as decoded (at `scales`, sizes dec_h x dec_w):
    crop box edges divided by the scale and rounded (each edge moves by at most half a decoded
    pixel: scale / 2 source pixels of a crop >= resolution * scale wide), src_size the decoded size.
    Eval views keep their resize and crop (they are in resized pixels). Unchanged at scale 1."""
    s = scales.double().view(-1, 1)
    size = torch.stack([dec_h, dec_w], 1).double()
    out = []
    for p in params:
        q = dict(p)
        q["src_size"] = size.float()
        if "resize" not in p:
            c = p["crop"].double()
            lo = torch.round(c[:, :2] / s)
            hi = torch.minimum(torch.round((c[:, :2] + c[:, 2:]) / s), size)
            lo = torch.minimum(lo, hi - 1)
            q["crop"] = torch.cat([lo, hi - lo], 1).float()
        out.append(q)
    return out


def crop_regions(imgs: list[Tensor], params: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Per view, each image's crop region (eval: the whole decoded image, which the view resizes
    first), zero-padded to the view's largest region -> (V x uint8 [B, 3, Hr, Wr], the params
    with each box now (0, 0, h, w) of its region). Nothing larger than a crop region is stacked."""
    regions, region_params = [], []
    for p in params:
        if "resize" in p:
            parts, q = imgs, p
        else:
            boxes = p["crop"].round().long().tolist()
            parts = [im[:, t : t + h, l : l + w] for im, (t, l, h, w) in zip(imgs, boxes)]
            hw = p["crop"][:, 2:]
            q = dict(p, crop=torch.cat([torch.zeros_like(hw), hw], 1), src_size=hw.clone())
        regions.append(pad_stack(parts))
        region_params.append(q)
    return regions, region_params


def pad_stack(imgs: list[Tensor]) -> Tensor:
    """Ragged [3, H, W] images -> zero-padded [B, 3, Hmax, Wmax] (crops never read the padding)."""
    H = max(i.shape[1] for i in imgs)
    W = max(i.shape[2] for i in imgs)
    out = torch.zeros(len(imgs), 3, H, W, dtype=torch.uint8)
    for n, im in enumerate(imgs):
        out[n, :, : im.shape[1], : im.shape[2]] = im
    return out


def decode_batch(jpegs: list[bytes], params: list[dict[str, Tensor]], resolution: int, reduced: bool,
                 where) -> tuple[list[Tensor], list[dict[str, Tensor]], Tensor]:
    """A batch's JPEGs decoded as small as its views allow -> (uint8 [3, h, w] images, the views'
    params in their pixels, [B] scales decoded at). where(n): the file and sample of image n."""
    scales = decode_scales(params, resolution, reduced)
    H, W = params[0]["src_size"].long().unbind(1)
    imgs, got = [], []
    for n, j in enumerate(jpegs):
        im, s = decode_one(j, int(scales[n]), int(H[n]), int(W[n]), where(n))
        imgs.append(im)
        got.append(s)
    scales = torch.tensor(got)
    dec_h = torch.tensor([im.shape[1] for im in imgs])
    dec_w = torch.tensor([im.shape[2] for im in imgs])
    return imgs, local_params(params, scales, dec_h, dec_w), scales
