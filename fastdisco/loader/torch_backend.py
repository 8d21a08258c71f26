"""`torch` backend: a plain DataLoader with PIL decoding over the webdataset shards.

Each DataLoader item is one whole batch of this rank's epoch plan (so order, sharding and
resume are exactly those of fastdisco.loader), keyed by (epoch, batch) so that one
DataLoader and its workers live across epochs. A worker reads the JPEGs by offset, draws the
batch's augmentation params from the batch's own generator and the full image sizes in the JPEG
headers, decodes each image with PIL only as large as its crops need (loader.reduced_decode:
1/2, 1/4 or 1/8 size by libjpeg's DCT scaling; data.reduced_decode=false for full size), and
then, by where the work pays:
  * CPU training device (crop_on auto / worker): the whole augmentation, image by image
    (augment.augment_cpu), so N workers use N cores and the main process only hands the
    finished views over. The crop is resized in uint8 (as dali and ffcv deliver it; within
    1 level of the float resize): replay such a view with apply_view(..., crop_u8=True);
  * CUDA, crop_on=worker: crops + resizes on the CPU, small uint8 views cross to the device,
    colour ops, blur, flip and normalisation run batched there (augment.Augment.photometric);
  * decode_device=mixed (default on CUDA when torchvision decodes JPEGs there): the workers only
    read the JPEG bytes and draw the params; the main process decodes the batch with nvJPEG
    (loader.gpu_decode) and crops every view as one batched op;
  * crop_on=device: each view's uint8 crop regions cross (padded to the batch's largest region,
    never to the largest image), the resize and everything after run on the device.
No extra dependency: this is also the reference backend.
"""
from __future__ import annotations

import atexit
import signal
import warnings
import weakref
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fastdisco import augment as A
from fastdisco.loader.base import BaseLoader, Batch
from fastdisco.loader import gpu_decode, view_pool
from fastdisco.loader.reduced_decode import crop_regions, decode_batch, header_sizes, pad_stack  # noqa: F401
from fastdisco.loader.view_pool import NO_SLOT, ViewPool
from fastdisco.dataset.images import decode_rgb
from fastdisco.dataset.webdataset import SampleReader, ShardIndex
from fastdisco.errors import FastdiscoError

PREFETCH = 4    # batches in flight per worker
POOL_SPARE = 3  # output batches beyond those in flight, for the ones the caller still holds


def decode_chw(data: bytes) -> torch.Tensor:
    """JPEG bytes -> uint8 [3, H, W] at full size: dataset.images.decode_rgb, viewed planar without
    a copy (the HWC pixels' [3, H, W] view is the layout torch's uint8 resize is fastest on)."""
    arr = decode_rgb(data)
    # `arr` is read-only (Pillow's buffer) and is only ever read, hence no warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr).permute(2, 0, 1)


def dataloader_generator(seed: int, rank: int, epoch: int, batch: int) -> torch.Generator:
    """The DataLoader's own generator for a pass that starts at (epoch, batch). Without one,
    `iter(DataLoader)` draws its workers' base seed from the global torch RNG, so a resumed run
    (which starts a pass at another moment) shifted every later global draw; the workers
    themselves draw nothing (each batch's augmentation has its own generator)."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, rank, batch, 0xDA7A])
    g = torch.Generator()
    g.manual_seed(int(ss.generate_state(2, np.uint64)[0] >> 1))
    return g


_LIVE: "weakref.WeakSet[TorchLoader]" = weakref.WeakSet()


@atexit.register
def _close_live_loaders() -> None:
    """At interpreter exit, stop the workers of every loader still alive. multiprocessing's exit
    handler SIGTERMs daemonic children and then joins them, and our workers ignore SIGTERM
    (`_ignore_sigterm`): a script that ended with a live loader hung at exit. Registered after
    torch's and multiprocessing's own exit handlers, so it runs before them (LIFO), while the
    DataLoader still shuts its workers down in order."""
    for loader in list(_LIVE):
        loader.close()


def _ignore_sigterm(_worker_id: int) -> None:
    """Workers ignore SIGTERM: SLURM (and torchrun) signal every process of the job, and a worker
    that dies first makes the main process raise mid-step instead of saving its checkpoint. The
    main process saves and exits; the workers go with it. (torch resets a worker's SIGTERM
    handling after fork, hence a worker_init_fn.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _PlanBatches(Dataset):
    """Item (epoch, b) = batch b of that epoch of this rank: decoded, params drawn, then what the
    worker does (`worker_does`): "augment" (the whole augmentation: finished views), "crop" (uint8
    crops; the device does the rest) or "decode" (zero-padded images; the device does everything).

    Keyed by (epoch, batch) rather than built per epoch, so one DataLoader with persistent
    workers serves every epoch (no fork + warm-up per epoch). A worker recomputes the epoch's
    plan (loader.rank_plan, deterministic) once per epoch and caches it."""

    def __init__(self, reader: SampleReader, plan, seed: int, rank: int, augment: A.Augment, worker_does: str,
                 pool: ViewPool | None = None, reduced_decode: bool = True):
        self.reader, self.plan, self.seed, self.rank = reader, plan, seed, rank
        self.augment, self.worker_does, self.pool = augment, worker_does, pool
        self.reduced_decode = reduced_decode
        self._cached: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self.plan(epoch))
        return self._cached[1]

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, b, slot = key
        idx, valid = self._plan(epoch)
        ids = idx[b]
        jpegs = [self.reader.jpeg(int(i)) for i in ids]
        labels = torch.tensor([self.reader.label(int(i)) for i in ids], dtype=torch.int64)
        g = A.make_generator(self.seed, epoch, self.rank, b)
        aug = self.augment
        # params from the full sizes in the headers (the boxes' distribution of a full decode);
        # then each image decoded only as large as its crops need, the boxes mapped onto it
        where = lambda n: sample_name(self.reader, int(ids[n]))  # noqa: E731
        try:
            params = aug.sample(g, *header_sizes(jpegs))
        except (OSError, SyntaxError, ValueError) as e:
            bad = next(n for n, j in enumerate(jpegs) if not _header_ok(j))
            raise FastdiscoError(f"{where(bad)}: damaged JPEG (cannot read its header: {type(e).__name__}: "
                                 f"{str(e)[:120]}); `fastdisco inspect --full` lists every damaged file") from None
        if self.worker_does == "raw":  # the main process decodes on the GPU (gpu_decode)
            return gpu_decode.byte_tensors(jpegs), params, labels, torch.from_numpy(ids.copy()), \
                torch.from_numpy(valid[b].copy())
        imgs, local, _ = decode_batch(jpegs, params, aug.resolution, self.reduced_decode, where)
        # in a worker process (one torch thread each) images run inline; without workers the
        # main process spreads them over its augmentation threads
        run = aug.cpu if torch.utils.data.get_worker_info() is None else None
        if self.worker_does == "augment":  # into the pool's slot when the task names one: only its number returns
            outs = self.pool.slots[slot] if slot != NO_SLOT else None
            views = A.augment_cpu(imgs, local, aug.resolution, aug.dtype, aug.channels_last, aug.antialias, run,
                                  crop_u8=True, outs=outs)
            payload = slot if outs is not None else views
        elif self.worker_does == "crop":
            payload = []
            for hp in map(A.host_params, local):  # image by image: no padded batch on the CPU
                crops = [A.crop_one(im, hp, n, aug.resolution, aug.antialias, u8=True) for n, im in enumerate(imgs)]
                payload.append(torch.cat(crops).to(torch.uint8))
        else:  # each view's crop regions, padded to the largest region: never a full-size padded batch
            payload = crop_regions(imgs, local)
        return payload, params, labels, torch.from_numpy(ids.copy()), torch.from_numpy(valid[b].copy())


def sample_name(reader: SampleReader, i: int) -> str:
    """'SHARD sample KEY' for messages about one record (as every reader error names it)."""
    return reader.where(i)


def _header_ok(jpeg: bytes) -> bool:
    try:
        header_sizes([jpeg])
        return True
    except (OSError, SyntaxError, ValueError):
        return False


class _KeysFrom(Sampler):
    """(epoch, batch) keys from the loader's current start onwards, running on into the next
    epochs: the workers keep decoding across an epoch boundary instead of idling until the
    next pass asks (a pass that starts elsewhere, after set_epoch / load_state_dict, restarts).
    Holds the loader weakly: the loader holds the DataLoader that holds this sampler."""

    def __init__(self, loader: "TorchLoader"):
        self.loader = weakref.ref(loader)

    def __iter__(self):
        # runs from the first request, after a restarted DataLoader iterator dropped its tasks
        loader = self.loader()
        if loader is None:
            return
        pool, (epoch, b), per_epoch = loader._pool, loader._start, len(loader)
        del loader  # this generator lives in the DataLoader iterator: no strong reference back
        if pool is not None:
            pool.reset()
        while True:
            for k in range(b, per_epoch):
                yield epoch, k, (pool.take() if pool is not None else NO_SLOT)
            epoch, b = epoch + 1, 0


class TorchLoader(BaseLoader):
    backend = "torch"

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.reader = SampleReader(ShardIndex.build(cfg.path, self.manifest))
        on = cfg.crop_on
        cuda = self.device.type == "cuda"
        dev = cfg.decode_device
        if dev == "auto":
            dev = "mixed" if cuda and gpu_decode.available(str(self.device)) else "cpu"
        if dev == "mixed" and not cuda:
            raise FastdiscoError("config key 'data.decode_device': 'mixed' (GPU decoding) needs a CUDA training device")
        self.decode_device = dev
        self.worker_does = "decode" if on == "device" or (on == "auto" and cuda) else ("crop" if cuda else "augment")
        if dev == "mixed":  # nvJPEG in the main process: the workers only read bytes and draw params
            self.worker_does = "raw"
        self._dl: DataLoader | None = None
        self._pool: ViewPool | None = None
        self._it = None                 # the DataLoader's iterator, running ahead of the consumer
        self._start = (0, 0)            # (epoch, batch) the iterator started at
        self._next = None               # (epoch, batch) the iterator yields next
        _LIVE.add(self)                 # closed at interpreter exit if still alive (a weak reference)

    def _dataloader(self) -> DataLoader:
        """One DataLoader for the loader's life: its workers persist across epochs."""
        if self._dl is None:
            # a plain function of the epoch (not this loader) travels to workers under any start method
            plan = self.plan_of_epoch()
            nw = self.cfg.num_workers
            if self.worker_does == "augment":
                A.warm_up_cpu()  # compiled (or loaded from numba's cache) once here; forked workers inherit it
                if view_pool.available():
                    # made before the workers start, so they inherit it; enough for every task in
                    # flight plus a few batches the caller still holds
                    self._pool = ViewPool.of_views(PREFETCH * nw + POOL_SPARE, self.num_views, self.cfg.batch_size,
                                                   self.cfg.resolution, self.augment.dtype, self.augment.channels_last,
                                                   shared=nw > 0)
            ds = _PlanBatches(self.reader, plan, self.cfg.seed, self.rank, self.augment, self.worker_does, self._pool,
                              self.cfg.reduced_decode)
            self._dl = DataLoader(ds, batch_size=None, sampler=_KeysFrom(self), num_workers=nw,
                                  pin_memory=self.device.type == "cuda", prefetch_factor=PREFETCH if nw > 0 else None,
                                  persistent_workers=nw > 0, worker_init_fn=_ignore_sigterm if nw > 0 else None,
                                  generator=dataloader_generator(self.cfg.seed, self.rank, *self._start))
        return self._dl

    def _release(self) -> None:
        # the iterator's __del__ shuts the persistent workers down; the shared batches go with the pool.
        # After an error from a worker (a damaged sample) the traceback keeps the iterator alive, so
        # its workers are shut down here: left running, they hung the interpreter's exit.
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._it = self._dl = self._pool = self._next = None

    def _batches(self, idx: np.ndarray, valid: np.ndarray, start: int, epoch: int) -> Iterator[Batch]:
        if self._it is None or self._next != (epoch, start):
            self._start = (epoch, start)
            dl = self._dataloader()
            dl.generator = dataloader_generator(self.cfg.seed, self.rank, epoch, start)  # never the global RNG
            self._it = iter(dl)
        nb = self.device.type == "cuda"
        for b in range(start, len(idx)):
            if self._it is None:
                raise FastdiscoError("torch loader: closed during a pass")
            payload, params, labels, ids, val = next(self._it)
            self._next = (epoch, b + 1) if b + 1 < len(idx) else (epoch + 1, 0)
            if not np.array_equal(ids.numpy(), idx[b]):  # the workers' plan must be the main process's
                raise RuntimeError(f"torch loader: batch {b} of epoch {epoch} holds other samples than planned")
            if self.worker_does == "augment":
                views = self._pool.hand_out(payload) if isinstance(payload, int) else payload
                yield self._device_batch(views, params, labels, ids, val)
                continue
            if self.worker_does == "crop":
                cropped = payload
            elif self.worker_does == "raw":  # one nvJPEG call, one padded batch, one crop op per view
                # nvJPEG reads the bytes from (pinned) host memory
                imgs = gpu_decode.pad_batch(gpu_decode.decode_batch(
                    payload, self.device, lambda n: sample_name(self.reader, int(ids[n]))))
                cropped = [A.crop_view(imgs, p, self.cfg.resolution, self.cfg.antialias) for p in params]
            else:
                regions, region_params = payload
                a = self.augment
                if not nb:  # CPU: crop, colour ops and normalisation image by image, as in a worker
                    views = [A.augment_cpu(r, [q], a.resolution, a.dtype, a.channels_last, a.antialias, a.cpu,
                                           crop_u8=True)[0] for r, q in zip(regions, region_params)]
                    yield self._device_batch(views, params, labels, ids, val)
                    continue
                cropped = [A.crop_view(r.to(self.device, non_blocking=nb), q, a.resolution, a.antialias)
                           for r, q in zip(regions, region_params)]
            yield self._to_batch(cropped, params, labels, ids, val)
