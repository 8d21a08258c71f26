"""`torch` backend: a plain DataLoader with PIL decoding over the webdataset shards.

Each DataLoader item is one whole batch of this rank's epoch plan (so order, sharding and
resume are exactly those of fastdisco.data.loader). A worker reads the JPEGs by offset,
decodes them with PIL, draws the batch's augmentation params from the batch's own generator
(they need the image sizes), and either crops + resizes on the CPU (`crop_on=worker`: small
uint8 views cross to the device) or hands over the zero-padded uint8 images for cropping on the
device (`crop_on=device`). Colour ops, blur, flip and normalisation run on the device
(augment.GpuAugment.finish). No extra dependency: this is also the reference backend.
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastdisco.data import augment as A
from fastdisco.data.loader import Batch, BaseLoader
from fastdisco.data.wds_reader import SampleReader, ShardIndex


def decode_rgb(data: bytes) -> torch.Tensor:
    """JPEG bytes -> uint8 [3, H, W]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def pad_stack(imgs: list[torch.Tensor]) -> torch.Tensor:
    """Ragged [3, H, W] images -> zero-padded [B, 3, Hmax, Wmax] (crops never read the padding)."""
    H = max(i.shape[1] for i in imgs)
    W = max(i.shape[2] for i in imgs)
    out = torch.zeros(len(imgs), 3, H, W, dtype=torch.uint8)
    for n, im in enumerate(imgs):
        out[n, :, : im.shape[1], : im.shape[2]] = im
    return out


class _EpochBatches(Dataset):
    """Item k = batch (start + k) of one epoch of one rank: decoded, params drawn, maybe cropped."""

    def __init__(self, reader: SampleReader, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int,
                 seed: int, rank: int, views: tuple, resolution: int, antialias: bool, crop_in_worker: bool):
        self.reader, self.idx, self.valid, self.start = reader, idx, valid, start
        self.epoch, self.seed, self.rank = epoch, seed, rank
        self.views, self.resolution, self.antialias = views, resolution, antialias
        self.crop_in_worker = crop_in_worker

    def __len__(self) -> int:
        return len(self.idx) - self.start

    def __getitem__(self, k: int):
        b = self.start + k
        ids = self.idx[b]
        imgs = [decode_rgb(self.reader.jpeg(int(i))) for i in ids]
        labels = torch.tensor([self.reader.label(int(i)) for i in ids], dtype=torch.int64)
        h = torch.tensor([im.shape[1] for im in imgs])
        w = torch.tensor([im.shape[2] for im in imgs])
        g = A.make_generator(self.seed, self.epoch, self.rank, b)
        params = A.sample_params(g, self.views, h, w, self.resolution)
        if self.crop_in_worker:
            out = []
            for p in params:  # crop image by image: no padded batch needed on the CPU
                crops = [A.crop_view(im.unsqueeze(0), {**{k: v[n : n + 1] for k, v in p.items()}}, self.resolution,
                                     self.antialias) for n, im in enumerate(imgs)]
                out.append(torch.cat(crops).clamp_(0, 255).round_().to(torch.uint8))
            payload = out
        else:
            payload = pad_stack(imgs)
        return payload, params, labels, torch.from_numpy(ids.copy()), torch.from_numpy(self.valid[b].copy())


class TorchLoader(BaseLoader):
    backend = "torch"

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.reader = SampleReader(ShardIndex.build(cfg.path, self.manifest))
        on = cfg.crop_on
        self.crop_in_worker = on == "worker" or (on == "auto" and self.device.type != "cuda")

    def _batches(self, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int) -> Iterator[Batch]:
        ds = _EpochBatches(self.reader, idx, valid, start, epoch, self.cfg.seed, self.rank, self.augment.views,
                           self.cfg.resolution, self.cfg.antialias, self.crop_in_worker)
        nw = self.cfg.num_workers
        dl = DataLoader(ds, batch_size=None, shuffle=False, num_workers=nw,
                        pin_memory=self.device.type == "cuda", prefetch_factor=4 if nw > 0 else None,
                        persistent_workers=False)
        for payload, params, labels, ids, val in dl:
            if self.crop_in_worker:
                cropped = payload
            else:
                nb = self.device.type == "cuda"
                imgs = payload.to(self.device, non_blocking=nb)
                cropped = [A.crop_view(imgs, p, self.cfg.resolution, self.cfg.antialias) for p in params]
            yield self._to_batch(cropped, params, labels, ids, val)
