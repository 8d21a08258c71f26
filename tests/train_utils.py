"""Test helpers for the engine: a tiny in-memory loader that follows the Batch contract of
docs/design.md section 2 (views, labels, indices, params; set_epoch; state_dict), and a tiny
frozen teacher. Deterministic from (seed, epoch), rank-aware like the real loaders: the global
batch of step b is the same whatever the world size, rank r takes its r-th slice."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Batch:
    views: list
    labels: torch.Tensor
    indices: torch.Tensor
    params: list = field(default_factory=list)


class TinyLoader:
    """`num_samples` smooth random images in `num_classes` colour families; each view adds
    per-epoch Gaussian noise and a random horizontal flip (an easy instance-discrimination set)."""

    def __init__(self, num_samples=64, batch_size=8, num_views=2, res=32, num_classes=4, seed=0,
                 rank=0, world_size=1, noise=0.3, poison_batch: int | None = None):
        g = torch.Generator().manual_seed(seed)
        self.labels_all = torch.arange(num_samples) % num_classes
        base = torch.randn(num_classes, 3, 1, 1, generator=g)
        low = torch.randn(num_samples, 3, 4, 4, generator=g)
        self.images = F.interpolate(low, size=(res, res), mode="bilinear", align_corners=False) + base[self.labels_all]
        self.batch_size, self.num_views, self.seed = batch_size, num_views, seed
        self.rank, self.world_size, self.noise = rank, world_size, noise
        self.num_samples, self.num_classes, self.classes = num_samples, num_classes, [str(i) for i in range(num_classes)]
        self.epoch, self._start, self._pos = 0, 0, 0
        self.poison_batch = poison_batch  # global batch counter at which views become NaN
        self._served = 0

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._start = state["epoch"], state["batch"]

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=g)
        noise = torch.randn(self.num_views, *self.images.shape, generator=g) * self.noise
        flips = torch.rand(self.num_views, self.num_samples, generator=g) < 0.5
        start, self._start = self._start, 0
        gb = self.batch_size * self.world_size
        for b in range(start, len(self)):
            idx = perm[b * gb:(b + 1) * gb][self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            views = []
            for v in range(self.num_views):
                x = self.images[idx] + noise[v, idx]
                x = torch.where(flips[v, idx].view(-1, 1, 1, 1), x.flip(-1), x)
                if self.poison_batch is not None and self._served == self.poison_batch:
                    x = x * float("nan")
                views.append(x.contiguous(memory_format=torch.channels_last))
            self._pos = b + 1
            self._served += 1
            yield Batch(views, self.labels_all[idx], idx, [{} for _ in views])


class TinyTeacher(nn.Module):
    """A frozen random conv net: embedding [N, dim] or logits. Frozen like fastdisco.models.teacher."""

    def __init__(self, dim: int = 128, seed: int = 123):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            p.requires_grad_(False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x.float())), 1).flatten(1))


def tiny_cfg(tmp_path, method_name="mocov2", **sections):
    """A Config for tiny CPU runs; `sections` = {"train": {...}, ...} overrides."""
    from fastdisco.config import Config, apply_overrides

    cfg = Config()
    apply_overrides(cfg, {
        "data": {"batch_size": 8, "resolution": 32},
        "model": {"student": "test_resnet", "proj_hidden": 64, "proj_dim": 128, "shuffle_bn_group": 4,
                  "num_classes": 10},
        "method": {"name": method_name, "queue_size": 64, "momentum": 0.99, "loss_impl": "torch"},
        "optim": {"lr": 0.3, "base_batch": 8, "weight_decay": 1e-4},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 8, "precision": "fp32", "compile": False,
                  "device": "cpu", "log_every": 2, "ckpt_every": 4, "progress": False, "tensorboard": False,
                  "deterministic": True},
    })
    apply_overrides(cfg, sections)
    return cfg


def have_backend(backend: str) -> bool:
    """Whether a loader backend's package imports here (torch always; DALI and ffcv are optional)."""
    mod = {"torch": "torch", "dali": "nvidia.dali", "ffcv": "ffcv"}[backend]
    try:
        __import__(mod)
        return True
    except ImportError:
        return False
