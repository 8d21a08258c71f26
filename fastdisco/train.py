"""The training loop: set-up, then `for step: batches -> forward -> loss -> backward -> step -> log`.

One optimizer step = `optim.grad_accum` loader batches. The hot loop never waits on the host:
loss parts are summed on the device and fetched every `train.log_every` steps.

Non-finite losses, without a per-step host sync: every step computes a device-side flag
`found_inf` (loss or clipped grad norm not finite; max-reduced across ranks). The fused SGD/AdamW
kernels and our LARS read `optimizer.found_inf` and skip the update on the device, so a bad step
never touches the weights or the optimizer state. The flag is also counted on the device and read
at the logging cadence (and before every checkpoint, so no checkpoint follows a bad step unseen):
`nan_policy=stop` then stops naming the first bad step and the last good checkpoint; `skip` logs
the count and goes on. (BN running statistics made non-finite by a bad forward are reset at that cadence.)
Optimizers without on-device skipping (foreach fallback) check the flag on the host every step.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch

from fastdisco.checkpoint import FORMAT, CheckpointManager, StopSignal, rng_state, set_rng_state
from fastdisco.config import save_yaml, to_dict
from fastdisco.distributed import all_reduce_mean, cleanup, init_distributed
from fastdisco.errors import FastdiscoError
from fastdisco.io_utils import write_json
from fastdisco.methods import METHODS, build_method
from fastdisco.models import build_student, repair_bn_stats
from fastdisco.optim import build_optimizer, cosine_schedule, scaled_lr, supports_found_inf



def build_models(cfg, method_cls, teacher=None, device="cpu", mem=torch.contiguous_format):
    """(student, teacher, method), seeded by train.seed. The student is built first, right after
    seeding, so that arms with the same seed (MoCo v2 alone, DisCo from any teacher) start from
    identical student weights: building / loading a teacher draws from the RNG. The queue and key
    encoder (build_method) are re-seeded after the teacher for the same reason."""
    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg.model, cfg.method.name).to(device, memory_format=mem)
    if teacher is None and method_cls.needs_teacher:
        from fastdisco.teacher import load_teacher

        teacher = load_teacher(cfg.model, output=method_cls.teacher_output)
    if teacher is not None:
        teacher = teacher.to(device, memory_format=mem)
    torch.manual_seed(cfg.train.seed + 1)
    method = build_method(cfg, student, teacher).to(device)
    return student, teacher, method

def _setup_determinism(cfg) -> None:
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _gather_objects(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def train(cfg, loader=None, teacher=None) -> dict:
    """Train per `cfg`; resumes from cfg.train.out_dir when it holds a checkpoint. `loader` and
    `teacher` may be injected (tests); otherwise built from cfg.data / cfg.model."""
    dist = init_distributed(cfg.train.device, cfg.train.dist_backend)
    try:
        with contextlib.ExitStack() as owned:  # closes what _train builds (the loader's workers)
            return _train(cfg, dist, loader, teacher, owned)
    finally:
        cleanup()


def _train(cfg, dist, loader, teacher, owned: contextlib.ExitStack) -> dict:
    device, rank, world, main = dist.device, dist.rank, dist.world_size, dist.is_main
    tc, oc = cfg.train, cfg.optim
    _setup_determinism(cfg)
    method_cls = METHODS.get(cfg.method.name)
    if method_cls is None:
        raise FastdiscoError(f"config key 'method.name': unknown method {cfg.method.name!r}")
    amp_dtype = torch.bfloat16 if tc.precision == "bf16" else None
    mem = torch.channels_last if tc.channels_last else torch.contiguous_format

    # ---- run directory
    run = Path(tc.out_dir)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run / "config.yaml")
        from fastdisco.provenance import collect

        write_json(run / "provenance.json", {**collect(), "seed": tc.seed, "world_size": world})

    # ---- data
    if loader is None:
        from fastdisco.data.loader import make_loader

        view_dtype = torch.bfloat16 if (amp_dtype is not None and device.type == "cuda") else torch.float32
        loader = owned.enter_context(make_loader(cfg.data, device=device, dtype=view_dtype, rank=rank,
                                                 world_size=world))
    accum = max(1, oc.grad_accum)
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch < 1:
        raise FastdiscoError(f"the loader gives {len(loader)} batches per epoch, fewer than optim.grad_accum="
                             f"{accum}: lower data.batch_size or optim.grad_accum")
    total = tc.max_steps if tc.max_steps > 0 else math.ceil(tc.epochs * steps_per_epoch)
    end = min(total, tc.stop_at) if tc.stop_at > 0 else total
    global_batch = cfg.data.batch_size * world * accum

    # ---- models (same seed on every rank: identical init and queue; then per-rank RNG)
    student, teacher, method = build_models(cfg, method_cls, teacher, device, mem)
    method.train()
    torch.manual_seed(tc.seed + rank)

    lr = scaled_lr(oc, global_batch)
    optimizer = build_optimizer(oc, student, device, lr)
    schedule = cosine_schedule(lr, total, round(oc.warmup_epochs * steps_per_epoch), oc.min_lr_ratio).tolist()
    on_device_skip = supports_found_inf(optimizer)

    # ---- resume
    ckpt = CheckpointManager(run, tc.keep_ckpts)
    step, epoch, last_ckpt = 0, 0, None
    if tc.resume and ckpt.exists():
        state = ckpt.load()
        student.load_state_dict(state["student"])
        method.load_extra_state(state)
        optimizer.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        step, last_ckpt = state["step"], str(ckpt.last)
        loader.load_state_dict(state["loader"])  # then set_epoch(saved epoch): resumes mid-epoch
        epoch = loader.state_dict()["epoch"]
        loader.set_epoch(epoch)
        if main:
            print(f"fastdisco train: resuming {run} at step {step}/{total}")
    else:
        loader.set_epoch(epoch)

    # ---- wrap: DDP for the student only; compile student / key encoder / teacher separately
    ddp = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(student, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)
    compile_ = torch.compile if tc.compile else (lambda m: m)
    method.run_student = compile_(ddp or student)
    if hasattr(method, "key_encoder"):
        method.run_key = compile_(method.key_encoder)
    if teacher is not None:
        method.run_teacher = compile_(teacher)

    # ---- logging
    writer, bar = None, None
    if main:
        if tc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tb"))
        if tc.progress:
            from tqdm import tqdm

            bar = tqdm(total=end, initial=step, unit="step", dynamic_ncols=True, desc=f"{cfg.method.name}")

    def save(done: int) -> str:
        rngs = _gather_objects(rng_state(), world)  # collective: every rank
        if not main:
            return ""
        state = {"format": FORMAT, "step": done, "epoch": epoch, "config": to_dict(cfg),
                 "student_name": cfg.model.student, "student": student.state_dict(),
                 "key_encoder": None, "queue": None, **method.extra_state(),
                 "optimizer": optimizer.state_dict(), "scaler": None, "rng": rngs, "loader": loader.state_dict()}
        return str(ckpt.save(state, done))

    def nan_stop(first_bad: int) -> FastdiscoError:
        where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
        return FastdiscoError(f"non-finite loss at step {first_bad} (train.nan_policy=stop); {where}; "
                              "the weights skipped that update. Lower optim.lr or set train.nan_policy=skip")

    sums: dict[str, torch.Tensor] = {}
    n_bad = torch.zeros((), device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    it = iter(loader)
    t_last, step_last, metrics = time.perf_counter(), step, {}

    with StopSignal() as signal_flag:
        while step < end:
            for g in optimizer.param_groups:
                g["lr"] = schedule[step]
            loss_step = torch.zeros((), device=device)
            for micro in range(accum):
                try:
                    batch = next(it)
                except StopIteration:  # epoch boundary (the loader may already have moved on)
                    epoch = max(epoch + 1, loader.state_dict()["epoch"])
                    loader.set_epoch(epoch)
                    it = iter(loader)
                    batch = next(it)
                sync = ddp.no_sync() if ddp is not None and micro < accum - 1 else contextlib.nullcontext()
                with sync:
                    with autocast:
                        loss, parts = method.step(batch)
                    (loss / accum).backward()
                loss_step += loss.detach().float() / accum
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.float() / accum
            finite = torch.isfinite(loss_step)
            if oc.clip_grad > 0:
                norm = torch.nn.utils.clip_grad_norm_(student.parameters(), oc.clip_grad)
                finite = finite & torch.isfinite(norm)
            found_inf = (~finite).float()
            if ddp is not None:
                torch.distributed.all_reduce(found_inf, op=torch.distributed.ReduceOp.MAX)
            if on_device_skip:
                optimizer.found_inf = found_inf
                optimizer.step()
            elif not found_inf.item():  # host check: only for optimizers without on-device skip
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_optimizer_step()
            n_bad += found_inf
            first_bad = torch.where((first_bad < 0) & (found_inf > 0), step + 1, first_bad)  # 1-based, as logged
            sums["loss"] = sums.get("loss", 0.0) + loss_step
            step += 1

            stop_now = bool(signal_flag) if world == 1 else False
            log_now = step % tc.log_every == 0 or step == end or stop_now
            ckpt_now = step % tc.ckpt_every == 0 or step == end or stop_now
            if log_now or ckpt_now:  # host sync point
                if world > 1:
                    flag = torch.tensor(float(bool(signal_flag)), device=device)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                    stop_now = bool(flag.item())
                    ckpt_now = ckpt_now or stop_now
                if int(n_bad.item()) > 0:
                    if tc.nan_policy == "stop":
                        raise nan_stop(int(first_bad.item()))
                    for m in (student, getattr(method, "key_encoder", None)):
                        if m is not None:
                            repair_bn_stats(m)
            if log_now and step > step_last:
                names = sorted(sums)
                vals = all_reduce_mean(torch.stack([sums[k] for k in names]).float()).tolist()
                dt = time.perf_counter() - t_last
                n = step - step_last
                metrics = {"step": step, "epoch": epoch, **{k: v / n for k, v in zip(names, vals)},
                           "lr": schedule[step - 1], "images_per_s": n * global_batch / max(dt, 1e-9),
                           "nonfinite_steps": int(n_bad.item())}
                if main:
                    with open(run / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                    if writer is not None:
                        for k, v in metrics.items():
                            if k not in ("step", "epoch"):
                                writer.add_scalar(f"train/{k}", v, step)
                    if bar is not None:
                        bar.update(step - bar.n)
                        bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.0f}")
                sums, t_last, step_last = {}, time.perf_counter(), step
            if ckpt_now:
                last_ckpt = save(step) or last_ckpt
            if stop_now:
                if main:
                    print(f"\nfastdisco train: signal received, saved {last_ckpt} at step {step}; "
                          "re-run the same command to resume")
                break

    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return {"step": step, "total_steps": total, "last_checkpoint": last_ckpt, "metrics": metrics,
            "interrupted": bool(signal_flag)}
