"""GPU decoding for the torch backend without DALI: nvJPEG through torchvision.

The DataLoader workers only read the JPEG bytes and draw the params from the header sizes; the
main process decodes the whole batch in one `torchvision.io.decode_jpeg(list, device="cuda")`
call (batched nvJPEG), pads the decoded images into one batch on the device, and cuts every view
of every image out of it with one batched crop + antialiased resize (ops.resized_crop_matmul:
two batched matmuls, torch's own resize weights), never a per-sample loop.
"""
from __future__ import annotations

import functools
import io
import warnings

import torch
from torch import Tensor

from fastdisco.errors import FastdiscoError


@functools.lru_cache(maxsize=None)
def available(device: str = "cuda") -> bool:
    """True when torchvision decodes a JPEG on `device` here (CUDA, a torchvision with nvJPEG)."""
    if not torch.cuda.is_available():
        return False
    try:
        from PIL import Image
        from torchvision.io import ImageReadMode, decode_jpeg

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG")
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        out = decode_jpeg([data], mode=ImageReadMode.RGB, device=device)
        return out[0].shape == (3, 16, 16)
    except Exception:  # noqa: BLE001 -- any failure means: decode on the CPU instead
        return False


def byte_tensors(jpegs: list[bytes]) -> list[Tensor]:
    """The raw JPEG bytes as uint8 tensors (what the workers hand over; pinned by the DataLoader)."""
    return [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]


def decode_batch(data: list[Tensor], device: torch.device, where=None) -> list[Tensor]:
    """uint8 byte tensors -> uint8 [3, H, W] RGB images on `device`, one batched nvJPEG call.
    On a CPU device (the path's tests) PIL decodes them, as the workers would."""
    if device.type == "cpu":
        from fastdisco.loader.torch_backend import decode_chw

        out = []
        for n, d in enumerate(data):
            try:
                out.append(decode_chw(d.numpy().tobytes()))
            except (OSError, SyntaxError, ValueError) as e:
                raise FastdiscoError(f"{where(n) if where else f'image {n}'}: cannot decode the JPEG "
                                     f"({type(e).__name__}: {e})") from None
        return out
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as e:  # name the sample that fails, one by one (only after a failure)
        for n, d in enumerate(data):
            try:
                decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as e1:
                raise FastdiscoError(f"{where(n) if where else f'image {n}'}: cannot decode the JPEG on the GPU "
                                     f"({str(e1).splitlines()[0]})") from None
        raise FastdiscoError(f"GPU JPEG decoding failed: {str(e).splitlines()[0]}") from None


def pad_batch(imgs: list[Tensor]) -> Tensor:
    """Ragged [3, H, W] images (any device) -> zero-padded [B, 3, Hmax, Wmax] in one kernel
    (a nested tensor's to_padded_tensor). The views' resize never reads the padding."""
    with warnings.catch_warnings():  # "nested tensors are a prototype": this one call is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.nested.nested_tensor(list(imgs)).to_padded_tensor(0)
