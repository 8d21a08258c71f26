"""`torch` backend: a plain DataLoader with PIL decoding over the webdataset shards.

Each DataLoader item is one whole batch of this rank's epoch plan (so order, sharding and
resume are exactly those of fastdisco.data.loader). A worker reads the JPEGs by offset,
decodes them with PIL, draws the batch's augmentation params from the batch's own generator
(they need the image sizes), and then, by where the work pays:
  * CPU training device (crop_on auto / worker): the whole augmentation, image by image
    (augment.augment_cpu), so N workers use N cores and the main process only hands the
    finished views over. The crop is resized in uint8 (as dali and ffcv deliver it; within
    1 level of the float resize): replay such a view with apply_view(..., crop_u8=True);
  * CUDA, crop_on=worker: crops + resizes on the CPU, small uint8 views cross to the device,
    colour ops, blur, flip and normalisation run batched there (augment.GpuAugment.finish);
  * crop_on=device: the zero-padded uint8 images cross, everything runs on the device.
No extra dependency: this is also the reference backend.
"""
from __future__ import annotations

import io
import warnings
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
    # no copy: a [3, H, W] view of the HWC pixels, the layout torch's uint8 resize is fastest on.
    # `arr` is read-only (Pillow's buffer) and is only ever read, hence no warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr).permute(2, 0, 1)


def pad_stack(imgs: list[torch.Tensor]) -> torch.Tensor:
    """Ragged [3, H, W] images -> zero-padded [B, 3, Hmax, Wmax] (crops never read the padding)."""
    H = max(i.shape[1] for i in imgs)
    W = max(i.shape[2] for i in imgs)
    out = torch.zeros(len(imgs), 3, H, W, dtype=torch.uint8)
    for n, im in enumerate(imgs):
        out[n, :, : im.shape[1], : im.shape[2]] = im
    return out


class _EpochBatches(Dataset):
    """Item k = batch (start + k) of one epoch of one rank: decoded, params drawn, then `mode`:
    "finish" (whole augmentation: finished views), "crop" (uint8 crops) or "none" (padded images)."""

    def __init__(self, reader: SampleReader, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int,
                 seed: int, rank: int, augment: A.GpuAugment, mode: str):
        self.reader, self.idx, self.valid, self.start = reader, idx, valid, start
        self.epoch, self.seed, self.rank = epoch, seed, rank
        self.augment, self.mode = augment, mode

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
        aug = self.augment
        params = aug.sample(g, h, w)
        # in a worker process (one torch thread each) images run inline; without workers the
        # main process spreads them over its augmentation threads
        run = aug.cpu if torch.utils.data.get_worker_info() is None else None
        if self.mode == "finish":
            payload = A.augment_cpu(imgs, params, aug.resolution, aug.dtype, aug.channels_last, aug.antialias, run,
                                    crop_u8=True)
        elif self.mode == "crop":
            payload = []
            for hp in map(A.host_params, params):  # image by image: no padded batch on the CPU
                crops = [A.crop_one(im, hp, n, aug.resolution, aug.antialias, u8=True) for n, im in enumerate(imgs)]
                payload.append(torch.cat(crops).to(torch.uint8))
        else:
            payload = pad_stack(imgs)
        return payload, params, labels, torch.from_numpy(ids.copy()), torch.from_numpy(self.valid[b].copy())


class TorchLoader(BaseLoader):
    backend = "torch"

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.reader = SampleReader(ShardIndex.build(cfg.path, self.manifest))
        on = cfg.crop_on
        cuda = self.device.type == "cuda"
        self.mode = "none" if on == "device" or (on == "auto" and cuda) else ("crop" if cuda else "finish")

    def _batches(self, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int) -> Iterator[Batch]:
        ds = _EpochBatches(self.reader, idx, valid, start, epoch, self.cfg.seed, self.rank, self.augment, self.mode)
        nw = self.cfg.num_workers
        dl = DataLoader(ds, batch_size=None, shuffle=False, num_workers=nw,
                        pin_memory=self.device.type == "cuda", prefetch_factor=4 if nw > 0 else None,
                        persistent_workers=False)
        nb = self.device.type == "cuda"
        for payload, params, labels, ids, val in dl:
            if self.mode == "finish":
                yield self._finished_batch(payload, params, labels, ids, val)
                continue
            if self.mode == "crop":
                cropped = payload
            else:
                imgs = payload.to(self.device, non_blocking=nb)
                if not nb:  # CPU: crop, colour ops and normalisation image by image, as in a worker
                    a = self.augment
                    views = A.augment_cpu(imgs, params, a.resolution, a.dtype, a.channels_last, a.antialias, a.cpu,
                                          crop_u8=True)
                    yield self._finished_batch(views, params, labels, ids, val)
                    continue
                cropped = [A.crop_view(imgs, p, self.cfg.resolution, self.cfg.antialias) for p in params]
            yield self._to_batch(cropped, params, labels, ids, val)
