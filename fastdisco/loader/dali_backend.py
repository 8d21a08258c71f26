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
is exact (only decoder / resize rounding differ). With data.num_workers > 0 the source runs in
DALI's worker processes (parallel external source: reads, header parses and param draws leave the
training thread) and the params come back through the pipeline as packed rows (PlanSource). The
pipeline's CPU threads come from the machine (cpu_threads), the mixed decoder gets nvJPEG's memory
and hardware-decoder hints (MIXED_DECODER_HINTS). One pipeline serves consecutive passes: its
source runs on into the next epoch, so DALI decodes ahead across the boundary; a pass that
starts elsewhere (set_epoch / load_state_dict) builds a new one.
"""
from __future__ import annotations

import os
import re
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


def _param_schema(views, res: int) -> list[list[tuple[str, torch.dtype, tuple[int, ...]]]]:
    """Per view: (key, dtype, shape per sample) of its params, in a fixed order (one draw of one
    sample tells them): how params travel through the pipeline as one float32 row per sample."""
    p1 = A.sample_params(torch.Generator().manual_seed(0), views, torch.tensor([res]), torch.tensor([res]), res)
    return [[(k, v.dtype, tuple(v.shape[1:])) for k, v in sorted(p.items())] for p in p1]


def pack_params(p: dict[str, torch.Tensor], schema) -> np.ndarray:
    """A view's params -> float32 [B, K] (every value is exactly representable: float32 draws,
    small integers, flags)."""
    return torch.cat([p[k].reshape(p[k].shape[0], -1).float() for k, _, _ in schema], 1).numpy()


def unpack_params(a: np.ndarray, schema) -> dict[str, torch.Tensor]:
    t, out, c = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), {}, 0
    for k, dtype, shape in schema:
        n = int(np.prod(shape)) if shape else 1
        out[k] = t[:, c : c + n].reshape(t.shape[0], *shape).to(dtype)
        c += n
    return out


class PlanSource:
    """The pipeline's external source for a pass that starts at (epoch, start) and runs on into the
    next epochs: batch `it` reads its JPEGs in the shared plan, draws its params from the header
    sizes and returns (jpegs, each view's ROI start / end, each view's packed params, labels / ids
    / valid). Everything the loader needs travels through the pipeline, so the callback holds no
    state the main process reads: DALI runs it in worker processes (parallel external source)."""

    def __init__(self, reader: SampleReader, plan_of_epoch, views, res: int, seed: int, rank: int,
                 epoch: int, start: int, per_epoch: int):
        self.reader, self.plan_of_epoch, self.views, self.res = reader, plan_of_epoch, views, res
        self.seed, self.rank, self.epoch, self.start, self.per_epoch = seed, rank, epoch, start, per_epoch
        self.schema = _param_schema(views, res)
        self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, info):
        it = int(getattr(info, "iteration", info))  # BatchInfo (parallel) or the iteration number
        e, b = self.epoch + (self.start + it) // self.per_epoch, (self.start + it) % self.per_epoch
        if e not in self._plans:
            self._plans.clear()  # one epoch ahead at most
            self._plans[e] = self.plan_of_epoch(e)
        idx, valid = self._plans[e]
        ids = idx[b]
        data = [self.reader.jpeg(int(i)) for i in ids]
        hw = torch.tensor([self.reader.parse(int(i), d, jpeg_size) for i, d in zip(ids, data)])  # errors name the sample
        params = A.sample_params(A.make_generator(self.seed, e, self.rank, b), self.views, hw[:, 0], hw[:, 1], self.res)
        labels = [self.reader.label(int(i)) for i in ids]
        meta = np.stack([np.asarray(labels, np.int64), ids.astype(np.int64), valid[b].astype(np.int64)], 1)
        rois, packed = [], []
        for p, sch in zip(params, self.schema):
            s, e_ = roi(p)
            rois += [list(s), list(e_)]
            packed.append(list(pack_params(p, sch)))
        return ([np.frombuffer(d, dtype=np.uint8) for d in data], *rois, *packed, list(meta))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_plans"}

    def __setstate__(self, st):
        self.__dict__.update(st, _plans={})


def cpu_threads() -> int:
    """CPU threads for this process's pipeline: the cores it may run on (its affinity, as SLURM /
    torchrun set it), shared by the ranks on this node (LOCAL_WORLD_SIZE)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


# nvJPEG hints for the mixed decoder, as NVIDIA's DALI ResNet-50 example: memory pools sized for
# ImageNet-like JPEGs up front (no reallocation in the first epochs), and most images to the
# A100 / H100 hardware JPEG decoder (the rest to CUDA nvJPEG)
MIXED_DECODER_HINTS = dict(device_memory_padding=211025920, host_memory_padding=140544512,
                           hw_decoder_load=0.99, preallocate_width_hint=512, preallocate_height_hint=512)


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
        self._schema = None     # how the running pipeline's params are packed (PlanSource.schema)
        self._next = None       # (epoch, batch) the pipeline yields next

    def _pipeline(self, source):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        gpu = self.decode_device == "mixed"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else None
        threads = self.cfg.dali_threads or cpu_threads()
        V = self.num_views
        # the source in worker processes (parallel external source): reading + header parsing +
        # param draws leave the training thread. Forked workers on a CPU run; spawned on CUDA
        # (a process that has initialised CUDA must not fork)
        workers = self.cfg.num_workers
        pipe_kw = dict(py_num_workers=workers, py_start_method="spawn" if torch.cuda.is_initialized() else "fork") \
            if workers > 0 else {}
        pipe = Pipeline(batch_size=self.cfg.batch_size, num_threads=threads, device_id=device_id,
                        seed=A.batch_seed(self.cfg.seed, 0, self.rank, 0) % (2**31), prefetch_queue_depth=2, **pipe_kw)
        with pipe:
            outs = fn.external_source(source=source, num_outputs=2 + 3 * V, batch=True, batch_info=workers > 0,
                                      parallel=workers > 0, prefetch_queue_depth=2 if workers > 0 else None,
                                      dtype=[types.UINT8] + [types.FLOAT] * (3 * V) + [types.INT64])
            hints = MIXED_DECODER_HINTS if gpu else {}
            img = fn.decoders.image(outs[0], device=self.decode_device, output_type=types.RGB, **hints)
            views = []
            for v in range(V):
                res = self.cfg.resolution
                views.append(fn.resize(img, size=[res, res], roi_start=outs[1 + 2 * v], roi_end=outs[2 + 2 * v],
                                       antialias=self.cfg.antialias, interp_type=types.INTERP_LINEAR))
            pipe.set_outputs(*views, *outs[1 + 2 * V :])  # the views, then each view's params and the meta
        pipe.build()
        return pipe

    def _source(self, epoch: int, start: int) -> PlanSource:
        return PlanSource(self.reader, self.plan_of_epoch(), self.augment.views, self.cfg.resolution, self.cfg.seed,
                          self.rank, epoch, start, len(self))

    def _release(self) -> None:
        # the last reference: DALI's Pipeline.__del__ stops its threads (and source workers) now
        self._pipe, self._next = None, None

    def _batches(self, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int) -> Iterator[Batch]:
        if self._pipe is None or self._next != (epoch, start):
            self._pipe = None  # a jump (set_epoch / load_state_dict): what was read ahead is dropped
            self._schema = None
            source = self._source(epoch, start)
            self._schema = source.schema
            self._pipe = self._pipeline(source)
        V = self.num_views
        for b in range(start, len(idx)):
            if self._pipe is None:
                raise FastdiscoError("dali loader: closed during a pass")
            try:
                outs = self._pipe.run()
            except Exception as e:  # a source worker's error arrives as text inside DALI's own
                raise _fastdisco_error(e) from None
            params = [unpack_params(np.array(o.as_tensor()), sch) for o, sch in zip(outs[V : 2 * V], self._schema)]
            meta = torch.from_numpy(np.array(outs[2 * V].as_tensor()))
            labels, ids, val = meta[:, 0].clone(), meta[:, 1].clone(), meta[:, 2].bool()
            self._next = (epoch, b + 1) if b + 1 < len(idx) else (epoch + 1, 0)
            if not np.array_equal(ids.numpy(), idx[b]):  # the source's plan must be the loader's
                raise RuntimeError(f"dali loader: batch {b} of epoch {epoch} holds other samples than planned")
            cropped = [self._to_torch(o).permute(0, 3, 1, 2) for o in outs[:V]]  # NHWC -> NCHW view
            yield self._to_batch(cropped, params, labels, ids, val)

    def _to_torch(self, out) -> torch.Tensor:
        t = out.as_tensor()
        if self.decode_device != "mixed":
            return torch.from_numpy(np.array(t))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dst = torch.empty(t.shape(), dtype=torch.uint8, device=self.device)
        feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(self.device))
        return dst


def _fastdisco_error(e: Exception) -> Exception:
    """DALI re-raises an error of a parallel source worker as a generic Exception carrying the
    worker's traceback text: give back the FastdiscoError it names (one line, the damaged
    sample), or the original error when it is something else."""
    found = re.findall(r"FastdiscoError: (.+)", str(e))
    return FastdiscoError(found[-1].strip()) if found else e
