"""`ffcv` backend: reads `data.beton`; ffcv's CPU workers decode and crop + resize each view
(one `PipelineSpec` per view on the one 'image' field), uint8 views go to the device, and the
shared on-device part (augment.Augment.photometric) does the rest.

Order, DDP split and resume are the shared plan: the ffcv Loader runs in SEQUENTIAL order over
the indices of this rank's remaining batches, reset each epoch.

Crops are the shared sampler's: ffcv's own RandomResizedCropRGBImageDecoder draws its boxes
from numba's per-thread RNG, which ffcv does not seed (neither reproducible nor resumable), so
we decode with `PlannedCropRGBImageDecoder` instead: ffcv's JPEG decode and resize_crop, the box
of each sample read from a table [N, 4] that the loader fills from each batch's own generator
(augment.sample_params, as the torch and DALI backends do) a few batches before ffcv's thread
reads them. For a given seed ffcv's crop boxes are the torch backend's, box for box,
`Batch.params` is exact, and a stopped run resumes exactly. (A sample that wrap-around padding
puts twice into a rank's epoch is cropped with the box of its first valid occurrence both
times; params report the box used.) Eval uses ffcv's CenterCropRGBImageDecoder (centre square
of 0.875 x the short side, resized), the same geometry as resize + center crop; its
`params["crop"]` is NaN (a box in resized pixels does not describe it).
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import torch

from fastdisco import augment as A
from fastdisco.loader.base import BaseLoader, Batch
from fastdisco.errors import FastdiscoError, require

BATCHES_AHEAD = 2  # ffcv's thread decodes at most BATCHES_AHEAD + 1 batches past the one last handed out
PLAN_AHEAD = BATCHES_AHEAD + 6  # batches whose crop boxes are in the table before ffcv may read them

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


@functools.lru_cache(maxsize=None)
def _decoder_class():
    """PlannedCropRGBImageDecoder, made on first use (ffcv and numba are optional)."""
    from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.compiler import Compiler

    class PlannedCropRGBImageDecoder(ResizedCropRGBImageDecoder):
        """ffcv's decode + resize of a crop, the crop of sample s being `boxes[s]` (top, left,
        height, width; int32), a table the loader fills before ffcv reads it."""

        def __init__(self, output_size, boxes: np.ndarray):
            super().__init__(output_size)
            assert boxes.dtype == np.int32 and boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.flags.c_contiguous
            self.boxes = boxes  # held by the pipeline that reads it: lives as long as any epoch thread

        @property
        def get_crop_generator(self):
            return None  # the crop comes from the table

        def generate_code(self):
            jpg = IMAGE_MODES["jpg"]
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            imdecode_c = Compiler.compile(imdecode)
            resize_crop_c = Compiler.compile(resize_crop)
            table = _table_reader(self.boxes, Compiler.is_enabled)

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage = my_storage
                boxes = table()
                for dst_ix in my_range(len(batch_indices)):
                    source_ix = batch_indices[dst_ix]
                    field = metadata[source_ix]
                    image_data = mem_read(field["data_ptr"], storage_state)
                    height = np.uint32(field["height"])
                    width = np.uint32(field["width"])
                    if field["mode"] == jpg:
                        temp_buffer = temp_storage[dst_ix]
                        imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                        selected_size = 3 * height * width
                        temp_buffer = temp_buffer.reshape(-1)[:selected_size]
                        temp_buffer = temp_buffer.reshape(height, width, 3)
                    else:
                        temp_buffer = image_data.reshape(height, width, 3)
                    i, j = np.int64(boxes[source_ix, 0]), np.int64(boxes[source_ix, 1])
                    h, w = np.int64(boxes[source_ix, 2]), np.int64(boxes[source_ix, 3])
                    resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
                return destination[:len(batch_indices)]

            decode.is_parallel = True
            return decode

    return PlannedCropRGBImageDecoder


def _table_reader(boxes: np.ndarray, jit: bool):
    """A function returning `boxes` that compiled code can call: numba freezes a global or
    closure array into the compiled code as a constant copy, so the jitted reader rebuilds a
    view of the live table from its address (the decoder keeps the array alive)."""
    if not jit:
        return lambda: boxes
    import numba

    addr, shape = boxes.ctypes.data, boxes.shape
    as_pointer = _address_as_pointer()

    @numba.njit(nogil=True)
    def table():
        return numba.carray(as_pointer(addr), shape, np.int32)

    return table


@functools.lru_cache(maxsize=None)
def _address_as_pointer():
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def address_as_pointer(typingctx, addr):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)
        return types.voidptr(addr), codegen

    return address_as_pointer


def shared_boxes(idx: np.ndarray, valid: np.ndarray) -> dict[int, tuple[int, int]]:
    """Samples that appear more than once in a rank's epoch plan (wrap-around padding), each with
    the (batch, slot) whose box all its occurrences use: the first valid occurrence, else the first.
    A table indexed by sample holds one box per sample at a time."""
    if valid.all():  # a permutation, not wrapped: every sample once
        return {}
    flat, ok = idx.reshape(-1), valid.reshape(-1)
    uniq, counts = np.unique(flat, return_counts=True)
    out = {}
    for s in uniq[counts > 1]:
        pos = np.flatnonzero(flat == s)
        good = pos[ok[pos]]
        out[int(s)] = divmod(int(good[0] if len(good) else pos[0]), idx.shape[1])
    return out


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
        from fastdisco.dataset.beton import check_beton

        check_beton(self.beton, self.manifest["num_samples"])  # truncated / damaged: one line naming the file
        self._loader = None
        self._names: list[str] = []
        self._boxes: dict[int, np.ndarray] = {}  # view -> [N, 4] int32 crop table (random-crop views)
        self._epoch_it = None  # the running pass's ffcv EpochIterator (a thread)

    def _build(self, indices: np.ndarray):
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import ToDevice, ToTensor

        res = self.cfg.resolution
        # CUDA: ffcv copies the crops to the device itself, from its pinned buffers on its own
        # streams (as ffcv-imagenet's train_imagenet.py): without ToDevice ~77 MB per step of
        # pageable memory was copied synchronously in the training thread. Labels and indices
        # stay on the host (the indices are checked against the plan there).
        to_dev = [ToDevice(self.device, non_blocking=True)] if self.device.type == "cuda" else []
        pipes: dict = {"image": None}
        self._boxes = {}
        for v, spec in enumerate(self.augment.views):
            if spec.crop == "center":
                dec = CenterCropRGBImageDecoder((res, res), ratio=A.EVAL_CROP_RATIO)
            else:
                self._boxes[v] = np.zeros((self.num_samples, 4), np.int32)
                dec = _decoder_class()((res, res), self._boxes[v])
            pipes[f"view{v}"] = PipelineSpec("image", decoder=dec, transforms=[ToTensor(), *to_dev])
        pipes["label"] = [IntDecoder(), ToTensor()]
        pipes["index"] = [IntDecoder(), ToTensor()]
        # seed: SEQUENTIAL order does not use it, but without one ffcv draws it from numpy's global RNG
        loader = Loader(self.beton, batch_size=self.cfg.batch_size, num_workers=max(1, self.cfg.num_workers),
                        order=OrderOption.SEQUENTIAL, indices=indices, pipelines=pipes, drop_last=False,
                        os_cache=True, batches_ahead=BATCHES_AHEAD, seed=self.cfg.seed & 0x7FFFFFFF)
        self._names = list(loader.pipeline_specs.keys())
        md = loader.reader.metadata
        f = loader.field_name_to_f_ix["image"]
        self._hw = np.stack([md[f"f{f}"]["height"], md[f"f{f}"]["width"]], 1).astype(np.int64)
        return loader

    def _release(self) -> None:
        self._stop_pass()
        self._loader = None  # the compiled pipeline goes

    def _stop_pass(self) -> None:
        """Ends the epoch thread of a pass left early (its generator not closed yet), so that it
        neither decodes while the crop table is refilled nor lingers."""
        import queue

        epoch_it, self._epoch_it = self._epoch_it, None
        if epoch_it is not None and epoch_it.is_alive():
            _stop_epoch_thread(epoch_it)
            try:  # the thread is gone: what it put last is nobody's, and its pass, if resumed, ends
                while True:
                    epoch_it.output_queue.get_nowait()
            except queue.Empty:
                pass
            epoch_it.output_queue.put_nowait(None)

    def _params(self, idx: np.ndarray, b: int, epoch: int) -> list[dict[str, torch.Tensor]]:
        """Batch b's params from its own generator (the shared sampler, sizes from ffcv's metadata)."""
        hw = torch.from_numpy(self._hw[idx[b]])
        return A.sample_params(self.generator(b, epoch), self.augment.views, hw[:, 0], hw[:, 1], self.cfg.resolution)

    def _batches(self, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int) -> Iterator[Batch]:
        order = idx[start:].reshape(-1).astype(np.uint64)
        if self._loader is None:
            self._loader = self._build(order)
        self._stop_pass()
        ld = self._loader
        ld.indices = order  # a new sequence for this epoch / resume point; no recompile
        ld.traversal_order.indices = order
        V, nb = self.num_views, len(idx)

        # crop table: samples in two places of the plan first (their one box, fixed for the pass),
        # then batches start.. start + PLAN_AHEAD, then one more per batch handed out
        shared = shared_boxes(idx, valid)
        for j in sorted({bj for bj, _ in shared.values()}):
            p = self._params(idx, j, epoch)
            for s, (bj, slot) in shared.items():
                if bj == j:
                    for v, table in self._boxes.items():
                        table[s] = p[v]["crop"][slot].numpy()
        is_shared = np.isin(idx, np.fromiter(shared, np.int64, len(shared))) if shared else None
        planned: dict[int, list[dict[str, torch.Tensor]]] = {}

        def plan(b: int) -> None:
            p = planned[b] = self._params(idx, b, epoch)
            keep = slice(None) if is_shared is None else ~is_shared[b]
            for v, table in self._boxes.items():
                table[idx[b][keep]] = p[v]["crop"].numpy()[keep]

        for b in range(start, min(nb, start + PLAN_AHEAD)):
            plan(b)
        epoch_it = self._epoch_it = iter(ld)  # ffcv's EpochIterator: a thread decoding up to BATCHES_AHEAD + 1 ahead
        b = start - 1
        try:
            for k, out in enumerate(epoch_it):
                b = start + k
                if b + PLAN_AHEAD < nb:  # ffcv reads that batch's boxes PLAN_AHEAD - BATCHES_AHEAD - 1 batches later at the earliest
                    plan(b + PLAN_AHEAD)
                named = dict(zip(self._names, out))
                # ffcv reuses its output buffers for later batches: copy what the Batch keeps
                ids = named["index"].reshape(-1).long().clone()
                if not torch.equal(ids, torch.from_numpy(idx[b])):
                    raise RuntimeError("ffcv returned samples out of the planned order")  # guards the SEQUENTIAL assumption
                params = planned.pop(b)
                for v, p in enumerate(params):
                    if v in self._boxes:  # the box ffcv cropped (the drawn one, but for samples in two places)
                        p["crop"] = torch.from_numpy(self._boxes[v][idx[b]]).to(p["crop"].dtype)
                    else:
                        p["crop"] = torch.full_like(p["crop"], float("nan"))  # ffcv's centre crop
                cropped = [named[f"view{v}"].permute(0, 3, 1, 2) for v in range(V)]
                yield self._to_batch(cropped, params, named["label"].reshape(-1).long().clone(), ids,
                                     torch.from_numpy(valid[b].copy()))
            if b + 1 < nb:
                raise FastdiscoError("ffcv loader: closed during a pass")
        finally:
            if epoch_it.is_alive():
                # a pass left early (break, resume elsewhere, close): without this the thread waits
                # forever to hand over its next batch, holding the loader and competing for the CPU
                _stop_epoch_thread(epoch_it)
            if self._epoch_it is epoch_it:
                self._epoch_it = None
