"""Robust image conversion: anything PIL can open -> one RGB JPEG with a capped longest side.

Every stored image is RGB, has its EXIF orientation applied and its longest side at most
`max_side`. Inputs that cannot be converted raise `BadImage` with a short reason, which the
caller writes to skipped.tsv; nothing here may crash a run on a bad file.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Truncated files are *skipped* (listed with a reason), never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Alpha is composited onto white: the usual choice for product photos / icons with
# transparent backgrounds (black would turn dark line art invisible).
BACKGROUND = (255, 255, 255)


class BadImage(Exception):
    """This input cannot become a training image; str(e) is the reason for skipped.tsv."""


@dataclass(frozen=True)
class Encoded:
    jpeg: bytes
    width: int
    height: int


# libjpeg's DCT scaling: a JPEG decodes directly at 1/2, 1/4 or 1/8 of its size (Image.draft)
DCT_SCALES = (1, 2, 4, 8)

# Decoded pixels allowed per image, per process: 32 Mpx (~100 MB as RGB, a few times that while
# converting). A huge JPEG decodes at a reduced DCT scale that fits; any other image over the cap
# is refused (BadImage; the loaders name its file and sample). Without a cap a 20 KB 1-bit PNG
# just under PIL's bomb limit cost 1.2 GB in every worker at once.
MAX_DECODED_PIXELS = 1 << 25


def pixel_cap_scale(width: int, height: int, is_jpeg: bool, scale: int = 1) -> int:
    """The smallest decode scale >= `scale` that keeps width x height under MAX_DECODED_PIXELS
    (JPEG DCT scales only); raises BadImage when no scale does."""
    for s in DCT_SCALES if is_jpeg else (1,):
        if s >= scale and -(-width // s) * -(-height // s) <= MAX_DECODED_PIXELS:
            return s
    how = "even at 1/8 scale" if is_jpeg else "(only JPEG decodes at a reduced size)"
    raise BadImage(f"too many pixels to decode: {width}x{height} = {width * height / 1e6:.0f} Mpx, over the "
                   f"{MAX_DECODED_PIXELS / 1e6:.0f} Mpx cap {how}")


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longest side capped at max_side, aspect kept, each side >= 1."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale -> 8-bit 'L', scaling instead of clipping."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or arr.dtype == np.uint16:
        out = (arr.astype(np.uint32) >> 8).astype(np.uint8)
    elif img.mode == "F":
        a = np.nan_to_num(arr.astype(np.float64))
        a = a * 255.0 if a.max(initial=0.0) <= 1.0 else a
        out = np.clip(a, 0, 255).astype(np.uint8)
    else:  # 'I' (int32): PNG 16-bit grayscale often opens as 'I' with values up to 65535
        a = arr.astype(np.int64)
        out = (np.clip(a, 0, 65535) >> 8 if a.max(initial=0) > 255 else np.clip(a, 0, 255)).astype(np.uint8)
    return Image.fromarray(out, "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 'RGB' (alpha over white, 16-bit scaled down, CMYK/palette converted)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _to_8bit(img).convert("RGB")
    if img.mode == "P":
        # Palette images may carry transparency in their info; RGBA makes it explicit.
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def convert(data: bytes | Image.Image, max_side: int, quality: int) -> Encoded:
    """Decode `data` (file bytes or a PIL image), fix orientation/mode/size, encode as JPEG."""
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning etc. must not spam the progress bar; the error
            # variant (> 2x the pixel limit) still raises and the file is skipped.
            warnings.simplefilter("ignore")
            return _convert(data, max_side, quality)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"too many pixels ({e.__class__.__name__})") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError,
            MemoryError, ZeroDivisionError, struct.error) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BadImage(f"cannot decode: {e.__class__.__name__}{': ' + msg if msg else ''}"[:200]) from None


def _convert(data: bytes | Image.Image, max_side: int, quality: int) -> Encoded:
    if isinstance(data, Image.Image):
        img = data
    else:
        if len(data) == 0:
            raise BadImage("empty file (0 bytes)")
        try:
            img = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise BadImage("not an image (unidentified format)") from None
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF / multi-page TIFF: the first frame
        w, h = img.size
        if w < 1 or h < 1:
            raise BadImage(f"empty image ({w}x{h})")
        # JPEG: decode directly at a reduced DCT scale (up to 8x faster) while staying at
        # least as large as the final size; the exact resize happens below. Any image: at most
        # MAX_DECODED_PIXELS decoded (a JPEG at a reduced scale, anything else is skipped).
        s = 1
        if img.format == "JPEG" and max(w, h) > max_side:
            tw, th = target_size(w, h, max_side)
            s = max(d for d in DCT_SCALES if d <= min(w // tw, h // th))
        s = pixel_cap_scale(w, h, img.format == "JPEG", s)
        if s > 1:
            img.draft(img.mode, (max(1, w // s), max(1, h // s)))
        img.load()  # raises on truncated / corrupt data
    img = ImageOps.exif_transpose(img) or img
    img = to_rgb(img)
    w, h = target_size(img.width, img.height, max_side)
    if (w, h) != img.size:
        img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Encoded(buf.getvalue(), w, h)


def decode_rgb(jpeg: bytes) -> np.ndarray:
    """Reference decoder used by tests and `inspect`: JPEG bytes -> HxWx3 uint8."""
    with Image.open(io.BytesIO(jpeg)) as img:
        return np.asarray(img.convert("RGB"))


def decode_rgb_scaled(jpeg: bytes, scale: int) -> tuple[np.ndarray, int]:
    """JPEG bytes decoded at 1/scale of their size (libjpeg DCT scaling, scale in DCT_SCALES) ->
    (HxWx3 uint8, the scale it was decoded at). The result is ceil(W / scale) x ceil(H / scale);
    its pixel x covers the source's pixels [x * scale, (x + 1) * scale). scale=1 is decode_rgb
    exactly. A JPEG libjpeg cannot scale (none we write) decodes at full size: scale 1 returned."""
    with Image.open(io.BytesIO(jpeg)) as img:
        got = 1
        if scale > 1:
            w, h = img.size
            # the largest power of two <= min(w // (w // s), h // (h // s)) is s itself (< 2 s)
            drafted = img.draft("RGB", (max(1, w // scale), max(1, h // scale)))
            if drafted is not None:
                got = int(round(w / drafted[1][2]))
        return np.asarray(img.convert("RGB")), got


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the JPEG header, without decoding."""
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
    return h, w
