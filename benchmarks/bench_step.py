"""One training step of fastdisco, built from the engine's own pieces, for benchmarks/throughput.py.

`build_setup(cfg, device)` makes what `fastdisco.engine.trainer` makes (student, method, optimizer, the
separately compiled student / key encoder / teacher, autocast) and `train_step(setup, batch)`
does one optimizer step the way Trainer.step does with grad_accum=1 (forward + loss under
autocast, backward, on-device found_inf, fused optimizer step, zero_grad, momentum update).
It does not re-implement any model or loss: `fastdisco.models.methods` computes the objective.

The teacher is a randomly initialised timm model wrapped in `fastdisco.models.teacher.Teacher` (for a
speed measurement its weights do not matter; load_teacher refuses to run without a checkpoint).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

import fastdisco._compat  # noqa: F401  (torchvision import fix on CPU torch)
from fastdisco.config import Config
from fastdisco.loader import Batch

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, no sparsity). Matched by substring
# of torch.cuda.get_device_name(); more specific names first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("RTX 4090", 165.0), ("RTX 3090", 71.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak from the table above, None when unknown (and on CPU)."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


# --------------------------------------------------------------------------- set-up
def random_teacher(model_cfg, output: str) -> nn.Module:
    """A frozen `Teacher` around a fresh timm model (no checkpoint): for timing only. Embedding
    teachers get MoCo v2's projection head (d -> teacher_proj_hidden -> proj_dim)."""
    import timm

    from fastdisco.augment.recipes import IMAGENET_MEAN, IMAGENET_STD
    from fastdisco.models.teacher import Teacher

    logits = output == "logits"
    backbone = timm.create_model(model_cfg.teacher, pretrained=False,
                                 num_classes=model_cfg.num_classes if logits else 0)
    head: nn.Module = nn.Identity()
    if not logits:
        hidden = model_cfg.teacher_proj_hidden or 2048
        head = nn.Sequential(nn.Linear(backbone.num_features, hidden), nn.ReLU(inplace=True),
                             nn.Linear(hidden, model_cfg.proj_dim))
    return Teacher(backbone, head, IMAGENET_MEAN, IMAGENET_STD, model_cfg.teacher_bn, output,
                   name=model_cfg.teacher, fmt="random")


@dataclass
class StepSetup:
    cfg: Config
    device: torch.device
    method: nn.Module
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    view_dtype: torch.dtype          # what the loader delivers (bf16 on CUDA under bf16 autocast)
    memory_format: torch.memory_format
    on_device_skip: bool

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)


def build_setup(cfg: Config, device: torch.device, teacher: nn.Module | None = None) -> StepSetup:
    """Student, teacher, method and optimizer exactly as fastdisco.engine.trainer.Trainer builds them
    (same seeding order). `teacher` defaults to `random_teacher` when the method needs one."""
    from fastdisco.models.methods import METHODS
    from fastdisco.engine.optim import build_optimizer, scaled_lr, supports_found_inf
    from fastdisco.engine.trainer import build_models, compile_options, setup_determinism

    setup_determinism(cfg.train.deterministic)
    cls = METHODS[cfg.method.name]
    amp_dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
    mem = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    if teacher is None and cls.needs_teacher:
        teacher = random_teacher(cfg.model, cls.teacher_output)
    student, teacher, method = build_models(cfg, cls, teacher, device, mem)
    method.train()
    torch.manual_seed(cfg.train.seed)  # the Trainer: seed + rank, rank 0 here
    import dataclasses

    from fastdisco.config import decay_norm_bias
    optimizer = build_optimizer(dataclasses.replace(cfg.optim, decay_norm_bias=decay_norm_bias(cfg)), student, device,
                                scaled_lr(cfg.optim, cfg.data.batch_size))  # "auto" -> the method's recipe, as the Trainer
    if cfg.train.compile:
        method.compile_parts(**compile_options(cfg.train))
    view_dtype = torch.bfloat16 if (amp_dtype is not None and device.type == "cuda") else torch.float32
    return StepSetup(cfg, device, method, optimizer, amp_dtype, view_dtype, mem, supports_found_inf(optimizer))


def train_step(s: StepSetup, batch) -> torch.Tensor:
    """One optimizer step as in Trainer.step (grad_accum=1, no clipping); returns the detached loss.
    No host sync: the non-finite flag goes to the fused optimizer on the device."""
    with s.autocast():
        loss, _parts = s.method.step(batch)
    loss.backward()
    if s.on_device_skip:
        s.optimizer.found_inf = (~torch.isfinite(loss.detach().float())).float()
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.method.after_optimizer_step()
    return loss.detach()


def synthetic_batch(s: StepSetup, batch_size: int, resolution: int, views: int) -> Batch:
    """Normalised-looking random views already on the device, in the loader's dtype and layout."""
    g = torch.Generator(device="cpu").manual_seed(0)
    vs = [torch.randn(batch_size, 3, resolution, resolution, generator=g).to(s.device, s.view_dtype)
          .contiguous(memory_format=s.memory_format) for _ in range(views)]
    labels = torch.zeros(batch_size, dtype=torch.long, device=s.device)
    idx = torch.arange(batch_size, device=s.device)
    return Batch(vs, labels, idx, [{} for _ in vs])


# --------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, steps: int) -> list[float]:
    """Milliseconds of each of `steps` calls after `warmup` untimed ones: CUDA events on the
    stream (no host sync inside the loop) on GPU, wall clock on CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        ev[0].record()
        for i in range(steps):
            fn()
            ev[i + 1].record()
        torch.cuda.synchronize(device)
        return [ev[i].elapsed_time(ev[i + 1]) for i in range(steps)]
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.convolution_backward, grouped convolutions included: the input gradient
    (a transposed convolution of grad_out with the weight) and the weight gradient (a convolution
    of the input with grad_out) each do the forward's multiply-adds. torch.utils.flop_counter's own
    formula counts the weight gradient as if groups were 1, G times too many (a depthwise conv's
    backward came out ~C/2 times its forward)."""
    from torch.utils.flop_counter import conv_flop_count

    fwd = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)  # w_shape: C_in/G (or C_out/G)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter():
    """torch.utils.flop_counter.FlopCounterMode with the grouped-convolution backward fixed."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})


def count_flops(s: StepSetup, batch) -> int:
    """FLOPs of one training step (forward + backward; matmuls and convolutions, as counted by
    torch.utils.flop_counter, with `conv_backward_flop` for grouped convolutions) on the eager
    modules, since compiled graphs hide their ops."""
    m = s.method
    saved = {k: getattr(m, k) for k in ("run_student", "run_key", "run_teacher") if hasattr(m, k)}
    m.run_student = m.student
    if "run_key" in saved:
        m.run_key = m.key_encoder
    if saved.get("run_teacher") is not None:
        m.run_teacher = m.teacher
    try:
        with flop_counter() as fc:
            with s.autocast():
                loss, _ = m.step(batch)
            loss.backward()
        s.optimizer.zero_grad(set_to_none=True)
        return int(fc.get_total_flops())
    finally:
        for k, v in saved.items():
            setattr(m, k, v)


def profile_calls(fn: Callable[[], object], device: torch.device, steps: int, trace_path: str,
                  row_limit: int = 15) -> tuple[str, list[dict]]:
    """Run `fn` `steps` times under torch.profiler, write a Chrome trace, and return the table of
    the top ops by self time and those ops as rows ({name, self_ms, calls})."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    prof.export_chrome_trace(trace_path)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    avgs = prof.key_averages()
    table = avgs.table(sort_by=attr, row_limit=row_limit)
    top = sorted(avgs, key=lambda e: getattr(e, attr, 0.0), reverse=True)[:row_limit]
    rows = [{"name": e.key, "self_ms": round(getattr(e, attr, 0.0) / 1e3 / steps, 4), "calls": e.count // steps}
            for e in top]
    return table, rows


# --------------------------------------------------------------------------- per-part breakdown
@contextlib.contextmanager
def _replaced(obj, **attrs):
    saved = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(obj, k, v)


def part_fns(s: StepSetup, batch) -> dict[str, Callable[[], object]]:
    """Each part of a training step as its own callable, for separately timed sub-runs:
    teacher (no grad), student forward + backward, momentum encoder (key forward + EMA), loss
    (method.step with the networks replaced by their cached outputs, + backward), optimizer."""
    from fastdisco.models.student import ema_update

    m, name = s.method, s.cfg.method.name
    views = batch.views
    student_views = views[:2] if name == "disco" else views[:1]
    teacher_views = views[:2] if name == "disco" else (views[:1] if name == "ssld" else [])
    parts: dict[str, Callable[[], object]] = {}

    def forward_views(run, vs, batched: bool) -> list:
        """The views through `run` as the method's step runs them: disco's two views as one
        batched forward where it batches them (DisCo.both_views), one forward per view otherwise."""
        return list(m.both_views(run, *vs, batched)) if len(vs) == 2 else [run(v) for v in vs]

    if teacher_views:
        def teacher():
            with s.autocast():
                return forward_views(m.teach, teacher_views, getattr(m, "batch_teacher_views", False))
        parts["teacher"] = teacher

    def student():
        with s.autocast():
            outs = forward_views(m.run_student, student_views, getattr(m, "batch_student_views", False))
        sum(o.float().square().mean() for o in outs).backward()
    parts["student_fwd_bwd"] = student

    if hasattr(m, "key_encoder"):
        def momentum():
            with s.autocast():
                m.keys(views[1])
            ema_update(m.key_encoder, m.student, m.cfg.momentum)
        parts["momentum_encoder"] = momentum

    # Cached network outputs: the loss sub-run then times only the objective's own work.
    with torch.no_grad(), s.autocast():
        s_out = {v.data_ptr(): m.run_student(v).detach() for v in student_views}
        t_out = {v.data_ptr(): m.teach(v).detach() for v in teacher_views}
        k_out = m.run_key(views[1]).detach() if hasattr(m, "key_encoder") else None

    def loss():
        leaves = {p: o.clone().requires_grad_(True) for p, o in s_out.items()}
        stubs = {"run_student": lambda x: leaves[x.data_ptr()]}
        if t_out:
            stubs["run_teacher"] = lambda x: t_out[x.data_ptr()]
        if k_out is not None:
            stubs["run_key"] = lambda x: k_out
        if hasattr(m, "batch_student_views"):  # the stubs answer per view (by the view's storage)
            stubs.update(batch_student_views=False, batch_teacher_views=False)
        with _replaced(m, **stubs), s.autocast():
            total, _ = m.step(batch)
        total.backward()
    parts["loss"] = loss

    params = [p for p in m.student.parameters() if p.requires_grad]

    def optimizer():
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if s.on_device_skip:
            s.optimizer.found_inf = torch.zeros((), device=s.device)
        s.optimizer.step()
    parts["optimizer"] = optimizer
    return parts


def breakdown(s: StepSetup, batch, warmup: int, steps: int) -> dict[str, float]:
    """Median milliseconds of each part (see part_fns)."""
    import statistics

    out = {}
    for name, fn in part_fns(s, batch).items():
        out[name] = round(statistics.median(time_calls(fn, s.device, warmup, steps)), 3)
    s.optimizer.zero_grad(set_to_none=True)
    return out
