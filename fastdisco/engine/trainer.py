"""The training loop: `Trainer` = run set-up + resume, then `for step: batches -> forward -> loss ->
backward -> step -> log`, with checkpointing and metrics in named helpers beside it.

One optimizer step = `optim.grad_accum` loader batches. The hot loop never waits on the host:
loss parts are summed on the device and fetched every `train.log_every` steps.

Non-finite losses, without a per-step host sync: every step computes a device-side flag
`found_inf` (loss or clipped grad norm not finite). The loss flag is max-reduced across ranks by an
asynchronous all_reduce issued before backward and waited on only before the optimizer step, so it
overlaps the backward; the grad-norm flag needs no collective (the gradients are all-reduced
already, so every rank computes the same norm). The fused SGD/AdamW
kernels and our LARS read `optimizer.found_inf` and skip the update on the device, so a bad step
never touches the weights or the optimizer state. The flag is also counted on the device and read
at the logging cadence (and before every checkpoint, so no checkpoint follows a bad step unseen):
`nan_policy=stop` then stops naming the first bad step and the last good checkpoint; `skip` logs
the count and goes on. (BN running statistics made non-finite by a bad forward are reset at that cadence.)
Optimizers without on-device skipping (foreach fallback) check the flag on the host every step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path

import torch

from fastdisco.config import decay_norm_bias, save_yaml, to_dict, validate
from fastdisco.distributed import all_reduce_mean, cleanup, init_distributed
from fastdisco.engine.checkpoint import (FORMAT, CheckpointManager, StopSignal, check_resume_config, rng_state,
                                        set_rng_state)
from fastdisco.engine.metrics import MetricsLogger
from fastdisco.engine.optim import build_optimizer, cosine_schedule, scaled_lr, supports_found_inf
from fastdisco.errors import FastdiscoError
from fastdisco.io import write_json
from fastdisco.models.methods import METHODS, build_method
from fastdisco.models.student import build_student, repair_bn_stats


def train(cfg, loader=None, teacher=None) -> dict:
    """Train per `cfg`; resumes from cfg.train.out_dir when it holds a checkpoint. `loader` and
    `teacher` may be injected (tests); otherwise built from cfg.data / cfg.model."""
    validate(cfg)  # also for configs built in code: every range, one line naming the key
    dist = init_distributed(cfg.train.device, cfg.train.dist_backend)
    try:
        with contextlib.ExitStack() as owned:  # closes what the Trainer builds (the loader's workers)
            return Trainer(cfg, dist, owned, loader, teacher).fit()
    finally:
        cleanup()


def build_models(cfg, method_cls, teacher=None, device="cpu", mem=torch.contiguous_format):
    """(student, teacher, method), seeded by train.seed. The student is built first, right after
    seeding, so that arms with the same seed (MoCo v2 alone, DisCo from any teacher) start from
    identical student weights: building / loading a teacher draws from the RNG. The queue and key
    encoder (build_method) are re-seeded after the teacher for the same reason."""
    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg.model, cfg.method.name).to(device, memory_format=mem)
    if cfg.model.init_ckpt:  # weights only, before the key encoder copies the student (models/init_weights.py)
        from fastdisco.models.init_weights import init_student

        init_student(student, cfg.model.init_ckpt)
    if teacher is None and method_cls.needs_teacher:
        from fastdisco.models.teacher import load_teacher, teacher_dtype

        teacher = load_teacher(cfg.model, output=method_cls.teacher_output, fold_bn=True,  # teacher_bn eval: conv+BN folded
                               dtype=teacher_dtype(cfg.train.precision, device))  # bf16 under CUDA bf16 autocast
    if teacher is not None:
        teacher = teacher.to(device, memory_format=mem)
    torch.manual_seed(cfg.train.seed + 1)
    method = build_method(cfg, student, teacher).to(device)
    return student, teacher, method


def setup_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compile_options(train_cfg) -> dict:
    """torch.compile keyword arguments from the config: `train.compile_mode` ("default",
    "reduce-overhead" = CUDA graphs, "max-autotune" = autotuned kernels + CUDA graphs)."""
    mode = getattr(train_cfg, "compile_mode", "default")
    # Static shapes: every step has the same batch (full batches only), and the student code
    # runs at two batch sizes (both views batched; the key encoder's one view). Left to Dynamo's
    # automatic dynamic shapes, the second size would recompile the student with a symbolic batch
    # dimension, whose grouped-BN layout arithmetic costs minutes of symbolic reasoning.
    return {"dynamic": False} | ({} if mode == "default" else {"mode": mode})


def gather_objects(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


class Trainer:
    """One run: built from the config (`__init__`: run folder, loader, models, optimizer, resume,
    wrapping), then `fit()` runs the loop. `step()` is one optimizer step (grad accumulation,
    found_inf), `save()` one checkpoint."""

    def __init__(self, cfg, dist, owned: contextlib.ExitStack, loader=None, teacher=None):
        self.cfg, self.dist = cfg, dist
        self.device, self.rank, self.world, self.main = dist.device, dist.rank, dist.world_size, dist.is_main
        tc, oc = cfg.train, cfg.optim
        setup_determinism(tc.deterministic)
        method_cls = METHODS.get(cfg.method.name)
        if method_cls is None:
            raise FastdiscoError(f"config key 'method.name': unknown method {cfg.method.name!r}")
        self.amp_dtype = torch.bfloat16 if tc.precision == "bf16" else None
        self.run = Path(tc.out_dir)
        self.ckpt = CheckpointManager(self.run, tc.keep_ckpts)
        self.resume_state = self._checked_resume_state()  # before config.yaml is rewritten
        self._write_run_dir()
        self.loader = loader if loader is not None else owned.enter_context(self._build_loader())
        self.accum = max(1, oc.grad_accum)
        steps_per_epoch = len(self.loader) // self.accum
        if steps_per_epoch < 1:
            raise FastdiscoError(f"the loader gives {len(self.loader)} batches per epoch, fewer than optim.grad_accum="
                                 f"{self.accum}: lower data.batch_size or optim.grad_accum")
        self.total = tc.max_steps if tc.max_steps > 0 else math.ceil(tc.epochs * steps_per_epoch)
        self.end = min(self.total, tc.stop_at) if tc.stop_at > 0 else self.total
        self.global_batch = cfg.data.batch_size * self.world * self.accum
        self._build_models(method_cls, teacher)
        lr = scaled_lr(oc, self.global_batch)
        self.optimizer = build_optimizer(dataclasses.replace(oc, decay_norm_bias=decay_norm_bias(cfg)),
                                         self.student, self.device, lr)  # "auto" -> the method's recipe
        self.schedule = cosine_schedule(lr, self.total, round(oc.warmup_epochs * steps_per_epoch),
                                        oc.min_lr_ratio).tolist()
        self.on_device_skip = supports_found_inf(self.optimizer)
        self.step_no, self.epoch, self.last_ckpt = 0, 0, None
        self._resume()
        self.ddp = self.method.prepare_distributed(self.device) if self.world > 1 else None
        if tc.compile:
            self.method.compile_parts(**compile_options(tc))
        self.cuda_graphs = tc.compile and tc.compile_mode != "default" and self.device.type == "cuda"
        # device-side counters of non-finite steps: read only at the logging cadence
        self.n_bad = torch.zeros((), device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.sums: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------- set-up
    def _checked_resume_state(self) -> dict | None:
        """The checkpoint to resume from, once its config agrees with this one: another
        architecture is refused, other values need train.allow_config_change (printed)."""
        if not (self.cfg.train.resume and self.ckpt.exists()):
            return None
        state = self.ckpt.load()
        changes = check_resume_config(state.get("config") or {}, to_dict(self.cfg),
                                      self.cfg.train.allow_config_change, str(self.run))
        if changes and self.main:
            import yaml

            kept = self.run / f"config.before_step_{state['step']:08d}.yaml"
            kept.write_text(yaml.safe_dump(state["config"], sort_keys=False))
            print(f"fastdisco train: resuming {self.run} with a changed config (train.allow_config_change): "
                  + ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes) + f"; the old one is in {kept.name}")
        return state

    def _write_run_dir(self) -> None:
        if self.main:
            self.run.mkdir(parents=True, exist_ok=True)
            save_yaml(self.cfg, self.run / "config.yaml")
            from fastdisco.provenance import collect

            write_json(self.run / "provenance.json", {**collect(), "seed": self.cfg.train.seed,
                                                       "world_size": self.world})

    def _build_loader(self):
        from fastdisco.loader import make_loader

        cuda_amp = self.amp_dtype is not None and self.device.type == "cuda"
        return make_loader(self.cfg.data, device=self.device, dtype=torch.bfloat16 if cuda_amp else torch.float32,
                           rank=self.rank, world_size=self.world)

    def _build_models(self, method_cls, teacher) -> None:
        """Same seed on every rank (identical init and queue), then a per-rank RNG, and the same
        per-rank seed for the method's own generator (shuffle-BN: the draws of a run whose loader
        never touches the global RNG are those the global RNG gave before it had its own)."""
        mem = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        self.student, self.teacher, self.method = build_models(self.cfg, method_cls, teacher, self.device, mem)
        self.method.train()
        if self.teacher is not None:  # a broken teacher stops the run here, by name, before any step
            self._check_teacher()
        torch.manual_seed(self.cfg.train.seed + self.rank)
        self.method.seed_rng(self.cfg.train.seed + self.rank, self.device)

    def _check_teacher(self) -> None:
        """Refuse a teacher with non-finite weights, or one whose output on a probe batch (finite
        input, the run's precision) is not finite. Checked once, eagerly, before training: not as a
        hook inside the step, which the compiled teacher would trace (a graph break) and which
        would read a value back to the host during a step. The probe runs in eval mode (running
        statistics untouched) from its own generator (the run's RNG streams do not move)."""
        t = self.teacher
        src = self.cfg.model.teacher_ckpt or self.cfg.model.teacher or "the given teacher"
        bad = sum(int((~torch.isfinite(x)).sum()) for x in (*t.parameters(), *t.buffers()) if x.is_floating_point())
        if bad:
            raise FastdiscoError(f"the teacher ({src}) has non-finite weights: {bad} of its weights are NaN/Inf; "
                                 "check the teacher checkpoint")
        res = self.cfg.data.resolution
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, res, res, generator=g).to(self.device)
        was_training = t.training
        t.eval()
        try:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                                 enabled=self.amp_dtype is not None):
                out = t(x)
        finally:
            t.train(was_training)
        if torch.is_tensor(out) and not bool(torch.isfinite(out).all()):
            raise FastdiscoError(f"the teacher ({src}) gives non-finite output on a probe batch from finite input "
                                 f"although its weights are finite: it overflows in {out.dtype}")

    def _resume(self) -> None:
        state, self.resume_state = self.resume_state, None
        if state is None:
            self.loader.set_epoch(self.epoch)
            if self.cfg.model.init_ckpt and self.main:
                print(f"fastdisco train: student weights from {self.cfg.model.init_ckpt}; optimizer, schedule "
                      "and step start fresh")
            return
        try:
            self.student.load_state_dict(state["student"])
        except RuntimeError as e:  # a checkpoint of an older version whose config lacks the keys compared
            raise FastdiscoError(f"cannot resume {self.run}: its checkpoint does not fit model.student="
                                 f"{self.cfg.model.student} ({str(e).splitlines()[-1].strip()[:200]}); "
                                 "use a new train.out_dir") from None
        self.method.load_extra_state(state)
        self.optimizer.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        mine = rngs[self.rank] if self.rank < len(rngs) else rngs[0]
        set_rng_state(mine)
        self.method.load_rng_state(mine)
        self.step_no, self.last_ckpt = state["step"], str(self.ckpt.last)
        self.loader.load_state_dict(state["loader"])  # then set_epoch(saved epoch): resumes mid-epoch
        self.epoch = self.loader.state_dict()["epoch"]
        self.loader.set_epoch(self.epoch)
        if self.main:
            print(f"fastdisco train: resuming {self.run} at step {self.step_no}/{self.total}")

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict:
        tc = self.cfg.train
        metrics_log = MetricsLogger(self.run, enabled=self.main, tensorboard=tc.tensorboard, progress=tc.progress,
                                    total=self.end, start=self.step_no, desc=self.cfg.method.name)
        self._it = iter(self.loader)
        t_last, step_last, metrics = time.perf_counter(), self.step_no, {}
        first_step = self.step_no
        with StopSignal() as signal_flag:
            while self.step_no < self.end:
                self.step()
                stop_now = bool(signal_flag) if self.world == 1 else False
                log_now = self.step_no % tc.log_every == 0 or self.step_no == self.end or stop_now
                ckpt_now = self.step_no % tc.ckpt_every == 0 or self.step_no == self.end or stop_now
                if log_now or ckpt_now:  # host sync point
                    if self.world > 1:
                        stop_now = self._any_rank(bool(signal_flag))
                        ckpt_now = ckpt_now or stop_now
                    self._check_nonfinite()
                if log_now and self.step_no > step_last:
                    metrics = self._metrics(time.perf_counter() - t_last, self.step_no - step_last)
                    metrics_log.log(metrics)
                    t_last, step_last = time.perf_counter(), self.step_no
                if ckpt_now:
                    self.last_ckpt = self.save() or self.last_ckpt
                if stop_now:
                    if self.main:
                        print(f"\nfastdisco train: signal received, saved {self.last_ckpt} at step {self.step_no}; "
                              "re-run the same command to resume")
                    break
        metrics_log.close()
        self._report_skipped(self.step_no - first_step)
        return {"step": self.step_no, "total_steps": self.total, "last_checkpoint": self.last_ckpt,
                "metrics": metrics, "interrupted": bool(signal_flag)}

    def _next_batch(self):
        try:
            return next(self._it)
        except StopIteration:  # epoch boundary (the loader may already have moved on)
            self.epoch = max(self.epoch + 1, self.loader.state_dict()["epoch"])
            self.loader.set_epoch(self.epoch)
            self._it = iter(self.loader)
            return next(self._it)

    def step(self) -> None:
        """One optimizer step over `grad_accum` loader batches; a non-finite loss or gradient skips
        the update on the device (no host sync), counted for the next logging step."""
        oc = self.cfg.optim
        if self.cuda_graphs:  # the previous step's graph outputs are dead: their memory may be reused
            torch.compiler.cudagraph_mark_step_begin()
        for g in self.optimizer.param_groups:
            g["lr"] = self.schedule[self.step_no]
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                  enabled=self.amp_dtype is not None)
        loss_step = torch.zeros((), device=self.device)
        found_inf, pending = None, None
        for micro in range(self.accum):
            batch = self._next_batch()
            last = micro == self.accum - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast:
                    loss, parts = self.method.step(batch)
                loss_step += loss.detach().float() / self.accum
                if last:  # the step's loss is known: its flag crosses the ranks while backward runs
                    found_inf, pending = self._loss_found_inf(loss_step)
                (loss / self.accum).backward()
            for k, v in parts.items():
                self.sums[k] = self.sums.get(k, 0.0) + v.float() / self.accum
        if pending is not None:
            pending.wait()  # NCCL: the stream waits, not the host
        if oc.clip_grad > 0:
            # the gradients are all-reduced already, so their norm (and its flag) is the same on every rank
            norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), oc.clip_grad)
            found_inf = torch.maximum(found_inf, (~torch.isfinite(norm)).float())
        if self.on_device_skip:
            self.optimizer.found_inf = found_inf
            self.optimizer.step()
        elif not found_inf.item():  # host check: only for optimizers without on-device skip
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step()
        self.n_bad += found_inf
        self.first_bad = torch.where((self.first_bad < 0) & (found_inf > 0), self.step_no + 1, self.first_bad)
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss_step
        self.step_no += 1

    # ---------------------------------------------------------------- helpers beside the loop
    def _loss_found_inf(self, loss_step: torch.Tensor):
        """(found_inf, work): 1.0 where this step's loss is not finite, max-reduced across ranks
        by an asynchronous all_reduce (work, None in a world of one) that runs during backward:
        off the critical path; the caller waits on it before the optimizer reads the flag."""
        found_inf = (~torch.isfinite(loss_step)).float()
        if self.ddp is None:
            return found_inf, None
        work = torch.distributed.all_reduce(found_inf, op=torch.distributed.ReduceOp.MAX, async_op=True)
        return found_inf, work

    def _any_rank(self, flag: bool) -> bool:
        t = torch.tensor(float(flag), device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def _check_nonfinite(self) -> None:
        """nan_policy=stop: raise naming the first bad step; skip: repair BN statistics and go on."""
        if int(self.n_bad.item()) == 0:
            return
        if self.cfg.train.nan_policy == "stop":
            where = f"last good checkpoint: {self.last_ckpt}" if self.last_ckpt else "no checkpoint was written yet"
            raise FastdiscoError(f"non-finite loss at step {int(self.first_bad.item())} (train.nan_policy=stop); "
                                 f"{where}; the weights skipped that update. Lower optim.lr or set "
                                 "train.nan_policy=skip")
        for m in (self.student, getattr(self.method, "key_encoder", None)):
            if m is not None:
                repair_bn_stats(m)

    def _report_skipped(self, ran: int) -> None:
        """nan_policy=skip: say how many steps were skipped; a run that skipped every step failed."""
        bad = int(self.n_bad.item())
        if bad == 0 or ran == 0:
            return
        if bad >= ran:
            raise FastdiscoError(f"every one of the {ran} steps of this run had a non-finite loss and was skipped "
                                 f"(train.nan_policy=skip), so the weights never changed; checkpoint "
                                 f"{self.last_ckpt}; lower optim.lr, or check the data and the teacher")
        if self.main:
            print(f"fastdisco train: warning: {bad} of {ran} steps had a non-finite loss and were skipped "
                  f"(first: step {int(self.first_bad.item())}; train.nan_policy=skip)")

    def _metrics(self, dt: float, n: int) -> dict:
        names = sorted(self.sums)
        vals = all_reduce_mean(torch.stack([self.sums[k] for k in names]).float()).tolist()
        self.sums = {}
        return {"step": self.step_no, "epoch": self.epoch, **{k: v / n for k, v in zip(names, vals)},
                "lr": self.schedule[self.step_no - 1], "images_per_s": n * self.global_batch / max(dt, 1e-9),
                "nonfinite_steps": int(self.n_bad.item())}

    def save(self) -> str:
        """A checkpoint of everything exact resume needs (collective: every rank calls it)."""
        rngs = gather_objects({**rng_state(), **self.method.rng_state()}, self.world)
        if not self.main:
            return ""
        state = {"format": FORMAT, "step": self.step_no, "epoch": self.epoch, "config": to_dict(self.cfg),
                 "student_name": self.cfg.model.student, "student": self.student.state_dict(),
                 "key_encoder": None, "queue": None, **self.method.extra_state(),
                 "optimizer": self.optimizer.state_dict(), "scaler": None, "rng": rngs,
                 "loader": self.loader.state_dict()}
        return str(self.ckpt.save(state, self.step_no))
