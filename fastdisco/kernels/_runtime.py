"""What the Triton launchers need to know about where they run. Imports triton: only the kernel
modules import this file, so impl="torch" never needs triton."""
from __future__ import annotations

import os

import torch

from fastdisco.errors import FastdiscoError

# Read once: @triton.jit decides compiled vs interpreted when the kernels are decorated.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_runnable(x: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    if x.device.type == "cuda" or (x.device.type == "cpu" and INTERPRET):
        return
    raise FastdiscoError(
        f"impl='triton' cannot run on {x.device} tensors here: use CUDA tensors, impl='torch', or "
        "set TRITON_INTERPRET=1 before importing fastdisco.kernels")


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype the kernels read. float64 is computed in float32 (the kernels accumulate in fp32);
    bf16 is upcast under the interpreter, whose bf16 tl.dot is wrong (triton-lang/triton#11584)."""
    if dtype == torch.float64 or (INTERPRET and dtype == torch.bfloat16):
        return torch.float32
    return dtype


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get IEEE fp32 dots (like torch's default matmul), not TF32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def target_programs(device: torch.device) -> int:
    """How many programs a launch should have to fill the device: two waves of SMs on CUDA.
    Under the interpreter each program costs ~1 ms, so only a few (enough to exercise the
    split/combine paths in tests)."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def split(n_tiles: int, n_blocks: int, device: torch.device) -> tuple[int, int]:
    """Split a loop of n_tiles tiles over programs so that n_blocks * splits fills the device.
    Returns (splits, tiles_per_split); every split gets at least one tile."""
    want = max(1, min(n_tiles, -(-target_programs(device) // n_blocks)))
    per = -(-n_tiles // want)
    return -(-n_tiles // per), per
