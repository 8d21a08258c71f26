"""`dali` backend: DALI decodes (on the GPU with `decode_device=mixed`, nvJPEG) and applies the
drawn crop as the region of interest of its antialiased resize; the colour ops, blur, flip and
normalisation are the shared on-device ones (augment.Augment.photometric).

Reading: the encoded JPEGs enter through `fn.external_source`, read by offset from the same
webdataset shards (dataset.webdataset, which uses the DALI .idx files), in the exact order of
fastdisco.loader's plan. We do not use `fn.readers.webdataset`: its shuffle is a
fixed-size random buffer, its sharding is contiguous, and it cannot start mid-epoch, so it
could not honour the shared permutation, the DDP split or exact resume. The crop boxes are
drawn by the shared sampler from the sizes in each JPEG header (PIL reads the header only),
so for a given seed DALI's crops are the torch backend's crops, box for box, and Batch.params
is exact (only decoder / resize rounding differ). One pipeline serves consecutive passes: its
source runs on into the next epoch, so DALI decodes ahead across the boundary; a pass that
starts elsewhere (set_epoch / load_state_dict) builds a new one.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator

import numpy as np
import torch

from fastdisco import augment as A
from fastdisco.loader.base import BaseLoader, Batch
from fastdisco.dataset.webdataset import SampleReader, ShardIndex
from fastdisco.dataset.images import jpeg_size
from fastdisco.errors import FastdiscoError, require

_HINT = ("install it with `pip install 'fastdisco[dali]'` (CUDA 13) or `pip install nvidia-dali-cuda120==2.4.0` "
         "(CUDA 12), or choose data.backend=torch")


def roi(params: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """A view's crop as DALI resize ROI in source pixels ([B, 2] start, end in (y, x) order)."""
    t, l, h, w = params["crop"].double().unbind(1)
    if "resize" in params:  # eval: the center box lives in resized pixels; map it back
        sy = params["resize"][:, 0].double() / params["src_size"][:, 0].double()
        sx = params["resize"][:, 1].double() / params["src_size"][:, 1].double()
        t, l, h, w = t / sy, l / sx, h / sy, w / sx
    start = torch.stack([t, l], 1).float().numpy()
    end = torch.stack([t + h, l + w], 1).float().numpy()
    return start, end


class DaliLoader(BaseLoader):
    backend = "dali"

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        require("nvidia.dali", "dali", _HINT)
        self.reader = SampleReader(ShardIndex.build(cfg.path, self.manifest))
        dev = cfg.decode_device
        if dev == "auto":
            dev = "mixed" if self.device.type == "cuda" else "cpu"
        if dev == "mixed" and self.device.type != "cuda":
            raise FastdiscoError("config key 'data.decode_device': 'mixed' (GPU decoding) needs a CUDA training device")
        self.decode_device = dev
        self._pipe = None       # kept across epochs: it decodes ahead into the next one
        self._pending: deque = deque()
        self._next = None       # (epoch, batch) the pipeline yields next

    def _pipeline(self, source):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        gpu = self.decode_device == "mixed"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else None
        threads = max(1, self.cfg.dali_threads or self.cfg.num_workers)
        pipe = Pipeline(batch_size=self.cfg.batch_size, num_threads=threads, device_id=device_id,
                        seed=A.batch_seed(self.cfg.seed, 0, self.rank, 0) % (2**31), prefetch_queue_depth=2)
        V = self.num_views
        with pipe:
            outs = fn.external_source(source=source, num_outputs=1 + 2 * V, batch=True,
                                      dtype=[types.UINT8] + [types.FLOAT] * (2 * V))
            img = fn.decoders.image(outs[0], device=self.decode_device, output_type=types.RGB)
            views = []
            for v in range(V):
                res = self.cfg.resolution
                views.append(fn.resize(img, size=[res, res], roi_start=outs[1 + 2 * v], roi_end=outs[2 + 2 * v],
                                       antialias=self.cfg.antialias, interp_type=types.INTERP_LINEAR))
            pipe.set_outputs(*views)
        pipe.build()
        return pipe

    def _source(self, epoch: int, start: int, pending: deque):
        """external_source callback for a pipeline that starts at (epoch, start) and runs on into
        the next epochs, so DALI decodes ahead across an epoch boundary. It reads the JPEGs of
        each batch in the shared plan, draws the batch's params and queues them for _batches."""
        # plain locals, not self: the pipeline holds this callback and the loader holds the pipeline
        views, res, seed, rank, reader = self.augment.views, self.cfg.resolution, self.cfg.seed, self.rank, self.reader
        per_epoch, plan_of_epoch = len(self), self.plan_of_epoch()
        plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def source(it: int):
            e, b = epoch + (start + it) // per_epoch, (start + it) % per_epoch
            if e not in plans:
                plans.clear()  # one epoch ahead at most
                plans[e] = plan_of_epoch(e)
            idx, valid = plans[e]
            ids = idx[b]
            data = [reader.jpeg(int(i)) for i in ids]
            hw = torch.tensor([reader.parse(int(i), d, jpeg_size) for i, d in zip(ids, data)])  # errors name the sample
            params = A.sample_params(A.make_generator(seed, e, rank, b), views, hw[:, 0], hw[:, 1], res)
            labels = torch.tensor([reader.label(int(i)) for i in ids], dtype=torch.int64)
            pending.append((params, labels, torch.from_numpy(ids.copy()), torch.from_numpy(valid[b].copy())))
            out = [np.frombuffer(d, dtype=np.uint8) for d in data]
            rois = []
            for p in params:
                s, e_ = roi(p)
                rois += [list(s), list(e_)]
            return (out, *rois)

        return source

    def _release(self) -> None:
        # the last reference: DALI's Pipeline.__del__ stops its threads now
        self._pipe, self._pending, self._next = None, deque(), None

    def _batches(self, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int) -> Iterator[Batch]:
        if self._pipe is None or self._next != (epoch, start):
            self._pipe = None  # a jump (set_epoch / load_state_dict): what was read ahead is dropped
            self._pending = deque()
            self._pipe = self._pipeline(self._source(epoch, start, self._pending))
        for b in range(start, len(idx)):
            if self._pipe is None:
                raise FastdiscoError("dali loader: closed during a pass")
            outs = self._pipe.run()
            params, labels, ids, val = self._pending.popleft()
            self._next = (epoch, b + 1) if b + 1 < len(idx) else (epoch + 1, 0)
            if not np.array_equal(ids.numpy(), idx[b]):  # the source's plan must be the loader's
                raise RuntimeError(f"dali loader: batch {b} of epoch {epoch} holds other samples than planned")
            cropped = [self._to_torch(o).permute(0, 3, 1, 2) for o in outs]  # NHWC -> NCHW view
            yield self._to_batch(cropped, params, labels, ids, val)

    def _to_torch(self, out) -> torch.Tensor:
        t = out.as_tensor()
        if self.decode_device != "mixed":
            return torch.from_numpy(np.array(t))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dst = torch.empty(t.shape(), dtype=torch.uint8, device=self.device)
        feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(self.device))
        return dst
