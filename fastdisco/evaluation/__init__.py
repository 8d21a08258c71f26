"""Evaluation of students and teachers: linear probe (DisCo protocol and a fast cached-feature
probe), weighted kNN, semi-supervised probes on 1% / 10% label subsets, and SSLD agreement.

The functions here work on tensors and loaders and need no CLI; `fastdisco eval` wraps them.
Names are imported lazily: `fastdisco --help` imports `fastdisco.cli.eval`, which must not
pull in torch.
"""
from __future__ import annotations

import importlib

_API = {
    "LoadedBackbone": "backbone", "load_backbone": "backbone", "load_checkpoint": "backbone",
    "extract_features": "features", "feature_fn": "features",
    "knn_eval": "knn",
    "linear_probe_fast": "linear", "linear_probe_protocol": "linear", "topk_accuracy": "linear",
    "balanced_subset": "semi", "read_subset_file": "semi", "semi_eval": "semi",
    "ssld_eval": "ssld",
    "RawPixels": "baselines", "random_init_backbone": "baselines", "recalibrate_bn": "baselines",
    "mean_pairwise_cosine": "baselines",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f"fastdisco.evaluation.{_API[name]}"), name)
    raise AttributeError(f"module 'fastdisco.evaluation' has no attribute {name!r}")
