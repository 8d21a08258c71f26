"""Training objectives: a small registry of methods, each with `step(batch) -> (loss, parts)`.

- mocov2: InfoNCE(q = student(view0), k = key_encoder(view1), queue), T = method.temperature.
- disco:  mocov2 + distillation of the final embedding on *both* views (docs/recipes.md, DisCo):
          the student query encoder runs with grad on view0 and view1, the frozen teacher on both,
          loss = infonce + w * (D(s(v0), t(v0)) + D(s(v1), t(v1))), D = 2 - 2 cos per sample.
          Student and teacher each take both views in one batched forward where BN allows it
          (grouped BN never mixes the views: same outputs, gradients and running statistics).
- supervised: cross-entropy of the student's classifier on the labels (a supervised SSLD teacher,
          the labels-only baseline); one view, labels must be >= 0 and < model.num_classes.
- ssld:   symmetric KL (T = method.kl_temperature) between student and teacher logits on the one
          shared view; soft-CE (softmax(teacher) as target) optional; labels unused.

`parts` are detached tensors logged by name (the train loop accumulates them on the device).
The train loop sets `run_student` / `run_key` / `run_teacher` (DDP- and/or compile-wrapped
callables); the raw modules stay in `student` / `key_encoder` / `teacher` for checkpoints.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdisco.errors import FastdiscoError
from fastdisco.distributed import world_size
from fastdisco.models.grouped_bn import batched_views, mixes_views
from fastdisco.models.student import (KeyQueue, check_shuffle_bn_batch, ema_update, make_key_encoder,
                                      shuffled_forward)

from fastdisco.kernels import embedding_distill_loss, infonce_loss, soft_ce_loss, symmetric_kl_loss

METHODS: dict[str, type["Method"]] = {}

# The official DisCo code uses MSELoss(reduction="sum") over its per-GPU batch of 32 while the
# InfoNCE is a batch mean, so the distillation term weighs 32x a batch-mean term. We reproduce
# that weight explicitly (independent of our own per-device batch): "sum" = 32 * batch mean.
OFFICIAL_DISCO_PER_GPU_BATCH = 32


def register(name: str):
    def deco(cls):
        METHODS[name] = cls
        cls.name = name
        return cls
    return deco


def build_method(cfg, student: nn.Module, teacher: nn.Module | None = None) -> "Method":
    cls = METHODS.get(cfg.method.name)
    if cls is None:
        raise FastdiscoError(f"config key 'method.name': unknown method {cfg.method.name!r} (known: {sorted(METHODS)})")
    if cls.needs_teacher and teacher is None:
        raise FastdiscoError(f"method '{cfg.method.name}' needs a teacher: set model.teacher and model.teacher_ckpt")
    return cls(cfg, student, teacher)


class Method(nn.Module):
    """Holds the trainable student plus whatever the objective needs (key encoder, queue, teacher)."""

    name = "base"
    needs_teacher = False
    teacher_output = "embedding"
    num_views = 1

    def __init__(self, cfg, student: nn.Module, teacher: nn.Module | None):
        super().__init__()
        self.cfg = cfg.method
        self.student = student
        self.teacher = teacher
        self.run_student: Callable = student
        self.run_teacher: Callable | None = teacher

    def __setattr__(self, name: str, value) -> None:
        # The teacher and the run_* wrappers are not submodules: method.train() must not flip
        # the teacher's BN mode, and wrappers must not duplicate parameters.
        if name == "teacher" or name.startswith("run_"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def step(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called once per optimizer step (after the update): momentum encoders live here."""

    # ---- its own random draws: never from the global RNG when the engine drives it
    def seed_rng(self, seed: int, device: torch.device) -> None:
        """Gives the method's own random draws (MoCo's shuffle-BN permutation) a generator of
        their own on `device`, seeded with `seed`. The engine saves and restores its state with
        every checkpoint (`rng_state` / `load_rng_state`), so no other draw from the global RNG
        (a DataLoader's `iter()`, a model's dropout) can shift it and a resumed run repeats an
        uninterrupted run's draws. Unseeded (a method driven by hand) they come from the global RNG."""

    def rng_state(self) -> dict:
        """The state of the method's own generators (plain tensors), for the checkpoint."""
        return {}

    def load_rng_state(self, state: dict) -> None:
        pass

    def check_batch(self, batch) -> None:
        if len(batch.views) < self.num_views:
            raise FastdiscoError(f"method '{self.name}' needs {self.num_views} views per image but the loader "
                                 f"gives {len(batch.views)}: set data.recipe accordingly")

    def extra_state(self) -> dict:
        """Training state beyond the student (checkpointed): key encoder, queue."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    @torch.no_grad()
    def teach(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_teacher(x)

    # ---- wrapping: the method knows which of its parts train, and how each one runs
    def prepare_distributed(self, device: torch.device) -> nn.Module:
        """DDP around the student only (the teacher and the key encoder are never wrapped: they
        take no gradient). Returns the DDP module (its no_sync() skips an accumulation step's
        all-reduce)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(self.student, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)
        self.run_student = ddp
        return ddp

    def compile_parts(self, **options) -> None:
        """torch.compile each part on its own: student (or its DDP wrapper) and teacher.
        `options` go to every torch.compile call (mode, fullgraph, backend)."""
        self.run_student = torch.compile(self.run_student, **options)
        if self.teacher is not None:
            self.run_teacher = torch.compile(self.teacher, **options)


@register("mocov2")
class MoCoV2(Method):
    num_views = 2

    def __init__(self, cfg, student, teacher=None):
        super().__init__(cfg, student, teacher)
        self.key_encoder = make_key_encoder(student)
        self.run_key: Callable = self.key_encoder
        self.queue = KeyQueue(cfg.method.queue_size, cfg.model.proj_dim)
        self.shuffle_keys = cfg.model.shuffle_bn_group > 0 and not cfg.model.sync_bn
        self.shuffle_group = cfg.model.shuffle_bn_group
        # a student without BatchNorm (GroupNorm, LayerNorm) has no BN leak: no batch size to refuse
        self.key_has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.key_encoder.modules())
        self.perm_generator: torch.Generator | None = None  # the shuffle-BN permutation's (seed_rng)

    def seed_rng(self, seed: int, device: torch.device) -> None:
        # under DDP only rank 0's generator draws: its permutation is broadcast to every rank
        if self.shuffle_keys:
            self.perm_generator = torch.Generator(device=device)
            self.perm_generator.manual_seed(seed)

    def rng_state(self) -> dict:
        return {"shuffle_bn": self.perm_generator.get_state()} if self.perm_generator is not None else {}

    def load_rng_state(self, state: dict) -> None:
        saved = state.get("shuffle_bn")
        # absent (a checkpoint without it) or of another device type: the generator keeps its seed
        if self.perm_generator is not None and saved is not None \
                and saved.numel() == self.perm_generator.get_state().numel():
            self.perm_generator.set_state(saved)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Keys of `x` (this rank's view-1 batch). With shuffle-BN the batch is shuffled across all
        ranks (one permutation from rank 0's generator) and unshuffled after the key encoder; a
        batch on which that would not separate keys from their queries' BN batch is refused."""
        if not self.shuffle_keys:
            return self.run_key(x)
        if self.key_has_bn:
            check_shuffle_bn_batch(x.shape[0], self.shuffle_group, world_size())
        return shuffled_forward(self.run_key, x, self.perm_generator)

    def contrastive(self, q: torch.Tensor, x_key: torch.Tensor) -> torch.Tensor:
        k = self.keys(x_key)
        loss = infonce_loss(q, k, self.queue.snapshot(), temperature=self.cfg.temperature, impl=self.cfg.loss_impl)
        self.queue.enqueue(k)
        return loss

    def step(self, batch):
        self.check_batch(batch)
        q = self.run_student(batch.views[0])
        loss = self.contrastive(q, batch.views[1])
        return loss, {"infonce": loss.detach()}

    def after_optimizer_step(self) -> None:
        ema_update(self.key_encoder, self.student, self.cfg.momentum)

    def compile_parts(self, **options) -> None:
        super().compile_parts(**options)
        self.run_key = torch.compile(self.key_encoder, **options)

    def extra_state(self) -> dict:
        return {"key_encoder": self.key_encoder.state_dict(), "queue": self.queue.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.key_encoder.load_state_dict(state["key_encoder"])
        self.queue.load_state_dict(state["queue"])


@register("disco")
class DisCo(MoCoV2):
    needs_teacher = True
    teacher_output = "embedding"

    def __init__(self, cfg, student, teacher=None):
        super().__init__(cfg, student, teacher)
        # Both views through the student in one forward, and through the teacher in another,
        # wherever that equals one forward per view: grouped BN keeps the views' statistics apart
        # (batched_views); a training-mode plain BN or SyncBN would mix them, so those run per view.
        self.batch_student_views = not mixes_views(student)
        self.batch_teacher_views = teacher is not None and not mixes_views(teacher)

    def distill_scale(self) -> float:
        if self.cfg.distill_reduction == "sum":
            return float(OFFICIAL_DISCO_PER_GPU_BATCH) * self.cfg.distill_weight
        return self.cfg.distill_weight

    @staticmethod
    def both_views(run: Callable, x0: torch.Tensor, x1: torch.Tensor, batched: bool):
        """(run(x0), run(x1)), as one forward of [x0; x1] when `batched`."""
        if not batched:
            return run(x0), run(x1)
        with batched_views(2):
            out = run(torch.cat([x0, x1]))
        return out[:x0.shape[0]], out[x0.shape[0]:]

    def step(self, batch):
        self.check_batch(batch)
        x0, x1 = batch.views[0], batch.views[1]
        s0, s1 = self.both_views(self.run_student, x0, x1, self.batch_student_views)
        t0, t1 = self.both_views(self.teach, x0, x1, self.batch_teacher_views)
        nce = self.contrastive(s0, x1)
        scale = self.distill_scale()
        d0 = embedding_distill_loss(s0, t0, reduction="mean", impl=self.cfg.loss_impl)
        d1 = embedding_distill_loss(s1, t1, reduction="mean", impl=self.cfg.loss_impl)
        loss = nce + scale * (d0 + d1)
        return loss, {"infonce": nce.detach(), "distill_v0": d0.detach(), "distill_v1": d1.detach()}


@register("ssld")
class SSLD(Method):
    needs_teacher = True
    teacher_output = "logits"
    num_views = 1

    def step(self, batch):
        self.check_batch(batch)
        x = batch.views[0]
        s = self.run_student(x)
        t = self.teach(x)
        if s.shape[-1] != t.shape[-1]:
            raise FastdiscoError(f"student gives {s.shape[-1]} logits but the teacher {t.shape[-1]}: "
                                 f"set model.num_classes={t.shape[-1]}")
        fn = symmetric_kl_loss if self.cfg.ssld_loss == "symkl" else soft_ce_loss
        loss = fn(s, t, temperature=self.cfg.kl_temperature, impl=self.cfg.loss_impl)
        return loss, {self.cfg.ssld_loss: loss.detach()}


@register("supervised")
class Supervised(Method):
    """Cross-entropy on the labels for the student's own classifier (no teacher)."""

    num_views = 1

    def __init__(self, cfg, student, teacher=None):
        super().__init__(cfg, student, teacher)
        self._checked = False

    def step(self, batch):
        self.check_batch(batch)
        logits = self.run_student(batch.views[0])
        y = batch.labels.to(logits.device)
        if not self._checked:  # one host sync on the first batch: unlabeled data or too few logits
            lo, hi = int(y.min()), int(y.max())
            if lo < 0:
                raise FastdiscoError("method 'supervised' needs labels, but the data has unlabeled samples (-1)")
            if hi >= logits.shape[-1]:
                raise FastdiscoError(f"label {hi} but the student gives {logits.shape[-1]} logits: "
                                     f"set model.num_classes to the number of classes")
            self._checked = True
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"ce": loss.detach()}
