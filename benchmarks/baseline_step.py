"""The baseline of benchmarks/throughput.py: what the official DisCo code does per step.

Official DisCo (after MoCo v2's main_moco.py): torchvision ImageFolder + PIL + the MoCo v2
"aug-plus" transforms in DataLoader workers over the original JPEGs (pin_memory, `.cuda(
non_blocking=True)` per view), fp32 eager (no autocast, no torch.compile), default
(contiguous) memory format, unfused losses, the teacher run on both views, plain per-GPU BN
(shuffle-BN needs several GPUs), and torch.optim.SGD without `fused`.

The objective is the same math as fastdisco's (fastdisco.models.methods with the plain-PyTorch loss
references), so the ratio fastdisco / baseline measures the engineering (input pipeline,
precision, layout, compilation, fused kernels), not a different loss.
"""
from __future__ import annotations

import copy

import torch

from fastdisco.config import Config, apply_overrides
from fastdisco.loader import Batch

BASELINE_BACKEND = "official_disco_torchvision"


def baseline_config(cfg: Config) -> Config:
    """`cfg` with every speed switch set as the official code has it."""
    base = copy.deepcopy(cfg)
    apply_overrides(base, {
        "train": {"precision": "fp32", "channels_last": False, "compile": False},
        "method": {"loss_impl": "torch"},
        "optim": {"fused": False},
        "model": {"shuffle_bn_group": 0, "sync_bn": False},
    })
    return base


def official_backend_flags() -> None:
    """PyTorch's default numerics for fp32 code (matmuls in full fp32; cuDNN convolutions may use
    TF32), which the official code runs with; fastdisco's set-up turns TF32 matmuls on, so reset
    them after build_setup. cudnn.benchmark stays on: that only favours the baseline."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def official_batches(loader, device: torch.device):
    """Endless Batches from the official DataLoader ((views, labels) tuples), moved to the
    device per view as the official training loop does; epochs restart transparently."""
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for views, labels in loader:
            vs = [v.to(device, non_blocking=True) for v in views]
            n = vs[0].shape[0]
            yield Batch(vs, labels.to(device, non_blocking=True), torch.arange(n, device=device), [{} for _ in vs])
        epoch += 1
