"""Reference rows every result table needs before a trained model means anything (issue 14):

- raw pixels: the eval-transformed, normalised image itself, flattened, as the "feature";
- random init: a randomly initialised backbone whose BatchNorm running statistics are
  recalibrated on the train images (a fresh BN holds mean 0 / var 1, which is no baseline).

Both are "backbones" for `fastdisco eval knn|linear` (`--format raw_pixels`, `--format random_init
--model NAME`), so they go through the same features, kNN and probe code as trained models.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from fastdisco.evaluation.features import prepare_input, unpack_batch


class RawPixels(nn.Module):
    """features(x) = x flattened: [N, C, H, W] -> [N, C*H*W]. No parameters."""

    num_classes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).float()


def random_init_backbone(name: str, seed: int = 0, stem: str = "default") -> nn.Module:
    """A headless timm backbone (num_classes=0) with timm's random init under `seed`."""
    import timm

    from fastdisco.errors import FastdiscoError
    from fastdisco.models.student import set_stem

    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        set_stem(model, stem, f"timm model '{name}'")
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise FastdiscoError(f"cannot build timm model '{name}': {str(e).splitlines()[0]}") from None
    finally:
        torch.random.set_rng_state(g)
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, *, device=None, max_batches: int = 0,
                   amp_dtype: torch.dtype | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average over
    the batches of `loader` (BN momentum None = cumulative), with the rest of the model in eval
    mode. Leaves the model in eval mode; returns how many images it saw."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    saved = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for b, batch in enumerate(loader):
            if max_batches and b >= max_batches:
                break
            x, *_ = unpack_batch(batch)
            x, dtype = prepare_input(x, device, amp_dtype)
            model(x)
            seen += x.shape[0]
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    if not seen:
        raise ValueError("BN recalibration: the loader yielded no batches")
    return seen


@torch.no_grad()
def mean_pairwise_cosine(feats: torch.Tensor) -> float:
    """Mean cosine similarity between the embeddings of DIFFERENT images (i != j): a collapse
    check (near 1 = every image maps to about the same direction). Exact, O(N d):
    sum_{i != j} z_i.z_j = |sum_i z_i|^2 - N for unit vectors z_i."""
    n = feats.shape[0]
    if n < 2:
        raise ValueError("mean_pairwise_cosine needs at least 2 embeddings")
    z = torch.nn.functional.normalize(feats.double(), dim=1)
    total = z.sum(0).pow(2).sum() - (z * z).sum()
    return float(total / (n * (n - 1)))
