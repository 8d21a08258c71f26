"""Shared test set-up. TRITON_INTERPRET must be set before any @triton.jit decoration, so it
is set here, before fastdisco.kernels is imported, whenever there is no CUDA device."""
import os

import pytest
import torch

import fastdisco._compat  # noqa: F401  (torchvision import fix before any test imports timm)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
