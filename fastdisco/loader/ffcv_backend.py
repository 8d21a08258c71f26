"""`ffcv` backend: reads `data.beton`; ffcv's CPU workers decode and random-resized-crop each
view (one `PipelineSpec` per view on the one 'image' field), uint8 views go to the device, and
the shared on-device part (augment.Augment.photometric) does the rest.

Order, DDP split and resume are the shared plan: the ffcv Loader runs in SEQUENTIAL order over
the indices of this rank's remaining batches, reset each epoch. ffcv's crop sampler
(`ffcv.fields.rgb_image.get_random_crop`) is torchvision's algorithm (10 tries, then a
centred crop at the clamped aspect), but it draws from numba's per-thread RNG, which ffcv does
not seed: the crop boxes are neither reproducible nor reported, so `params["crop"]` is NaN
here. Everything else in Batch.params (flip, jitter, flags, sigmas) is drawn and applied by
fastdisco, reproducibly. Eval uses ffcv's CenterCropRGBImageDecoder (centre square of
0.875 x the short side, resized), the same geometry as resize + center crop.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from fastdisco import augment as A
from fastdisco.loader.base import BaseLoader, Batch
from fastdisco.errors import FastdiscoError, require

_HINT = ("install ffcv 1.0.2 (pip install '.[ffcv]' after the Debian build packages that tools/install.sh lists; "
         "README: Install details), or choose data.backend=torch")


def _stop_epoch_thread(epoch_it) -> None:
    """Ends ffcv's EpochIterator thread. close() makes it quit at its next full-queue retry, but
    once it has read every batch it puts the end marker without a timeout: drain the queue so
    that put returns too (a plain join hung there)."""
    import queue

    epoch_it.close()
    while epoch_it.is_alive():
        try:
            while True:
                epoch_it.output_queue.get_nowait()
        except queue.Empty:
            pass
        epoch_it.join(timeout=0.05)


class FfcvLoader(BaseLoader):
    backend = "ffcv"

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        require("ffcv", "ffcv", _HINT)
        from pathlib import Path

        entry = self.manifest.get("ffcv")
        if not entry:
            raise FastdiscoError(f"{cfg.path}: prepared without the ffcv format (manifest 'ffcv' is null)")
        self.beton = str(Path(cfg.path) / entry["path"])
        self._loader = None
        self._names: list[str] = []

    def _build(self, indices: np.ndarray):
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import ToTensor

        res = self.cfg.resolution
        pipes: dict = {"image": None}
        for v, spec in enumerate(self.augment.views):
            if spec.crop == "center":
                dec = CenterCropRGBImageDecoder((res, res), ratio=A.EVAL_CROP_RATIO)
            else:
                dec = RandomResizedCropRGBImageDecoder((res, res), scale=spec.scale, ratio=spec.ratio)
            pipes[f"view{v}"] = PipelineSpec("image", decoder=dec, transforms=[ToTensor()])
        pipes["label"] = [IntDecoder(), ToTensor()]
        pipes["index"] = [IntDecoder(), ToTensor()]
        loader = Loader(self.beton, batch_size=self.cfg.batch_size, num_workers=max(1, self.cfg.num_workers),
                        order=OrderOption.SEQUENTIAL, indices=indices, pipelines=pipes, drop_last=False,
                        os_cache=True, batches_ahead=2)
        self._names = list(loader.pipeline_specs.keys())
        md = loader.reader.metadata
        f = loader.field_name_to_f_ix["image"]
        self._hw = np.stack([md[f"f{f}"]["height"], md[f"f{f}"]["width"]], 1).astype(np.int64)
        return loader

    def _release(self) -> None:
        self._loader = None  # its epoch thread ends with the pass; the compiled pipeline goes

    def _batches(self, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int) -> Iterator[Batch]:
        order = idx[start:].reshape(-1).astype(np.uint64)
        if self._loader is None:
            self._loader = self._build(order)
        ld = self._loader
        ld.indices = order  # a new sequence for this epoch / resume point; no recompile
        ld.traversal_order.indices = order
        V = self.num_views
        epoch_it = iter(ld)  # ffcv's EpochIterator: a thread decoding up to batches_ahead batches ahead
        try:
            for k, out in enumerate(epoch_it):
                b = start + k
                named = dict(zip(self._names, out))
                # ffcv reuses its output buffers for later batches: copy what the Batch keeps
                ids = named["index"].reshape(-1).long().clone()
                if not torch.equal(ids, torch.from_numpy(idx[b])):
                    raise RuntimeError("ffcv returned samples out of the planned order")  # guards the SEQUENTIAL assumption
                hw = torch.from_numpy(self._hw[ids.numpy()])
                params = A.sample_params(self.generator(b, epoch), self.augment.views, hw[:, 0], hw[:, 1],
                                         self.cfg.resolution)
                for p in params:
                    p["crop"] = torch.full_like(p["crop"], float("nan"))  # drawn by ffcv, unknown
                cropped = [named[f"view{v}"].permute(0, 3, 1, 2) for v in range(V)]
                yield self._to_batch(cropped, params, named["label"].reshape(-1).long().clone(), ids,
                                     torch.from_numpy(valid[b].copy()))
        finally:
            if epoch_it.is_alive():
                # a pass left early (break, resume elsewhere, close): without this the thread waits
                # forever to hand over its next batch, holding the loader and competing for the CPU
                _stop_epoch_thread(epoch_it)
