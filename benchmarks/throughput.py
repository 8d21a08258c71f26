"""Throughput benchmarks; one function per mode, one CLI. Rows go to
benchmarks/results/throughput.jsonl (results_io.append_rows), stamped with provenance.

  --mode loader   source images/s of each fastdisco loader backend on prepared data, and of
                  the official DisCo input pipeline (torchvision ImageFolder + PIL + MoCo v2
                  transforms in DataLoader workers) over the original JPEGs, in one run.
  --mode model    one training step of the chosen method on synthetic batches already on the
                  device: the model-bound ceiling (no loading).
  --mode step     the full training step, batches from the prepared data through make_loader.
  --mode baseline the official DisCo step (benchmarks/baseline_step.py): ImageFolder + PIL
                  workers over the original JPEGs, fp32 eager, contiguous, unfused losses.
  --mode all      loader, model and step, each with its baseline (ratios from one invocation).

model and step also run their baseline in the same invocation unless --no-baseline, and give
`vs_baseline` (and step `vs_model`) ratios. Images/s count source images (not views). Timing:
CUDA events on GPU, wall clock on CPU. --profile writes torch.profiler traces and prints the top
ops; --breakdown times the parts (teacher, student fwd+bwd, momentum encoder, loss, optimizer,
loading) in separate sub-runs; --flops counts FLOPs (torch.utils.flop_counter) and the share of
the GPU's dense bf16 peak (both default on for CUDA).

Examples:
  python benchmarks/throughput.py --mode loader --synthetic 320 --workers 2 --batch 32   # CPU: 3 rounds
  python benchmarks/throughput.py --mode all --synthetic 2048 --workers 12 --batch 256 \
      --method disco --teacher resnet50 --student efficientnet_b0 --backends dali,torch
  python benchmarks/throughput.py --mode step --synthetic 128 --workers 2 --batch 32 --resolution 64 \
      --teacher resnet18 --student resnet10t --precision fp32 --steps 6 --warmup 2   # CPU
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastdisco._compat  # noqa: E402,F401


def cpu_note() -> str:
    return (f"CPU wall clock on a shared {os.cpu_count()}-core machine (other jobs running): noisy; "
            "compare ratios within one run_id, not absolute numbers; not a GPU result")


def dataset(args) -> tuple[Path | None, Path]:
    """(original JPEG folders or None, prepared dataset) for this invocation; --synthetic N
    makes both once, in a temporary directory shared by all modes."""
    if getattr(args, "_dataset", None) is None:
        if args.synthetic:
            args._tmp = tempfile.TemporaryDirectory()
            args._dataset = make_synthetic(Path(args._tmp.name), args.synthetic)
        else:
            args._dataset = (Path(args.src) if args.src else None, Path(args.data))
    return args._dataset


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_synthetic(root: Path, n: int) -> tuple[Path, Path]:
    """n class-folder JPEGs of 500x375 (ImageNet's typical size) and their prepared dataset."""
    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder

    classes = 4
    src = write_synthetic_folder(root / "src", num_classes=classes, per_class=max(1, n // classes),
                                 size=(375, 500), ext="jpg")
    formats = ("ffcv", "dali") if _importable("ffcv") else ("dali",)  # the GPU machine may lack ffcv
    prepare_dataset(src, root / "prepared", formats=formats, workers=2, max_side=512, quality=90)
    return src, root / "prepared"


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def official_baseline_loader(src: Path, batch: int, workers: int, res: int, views: int = 2,
                             pin_memory: bool = False):
    """The official DisCo / MoCo v2 input pipeline ("aug-plus"), as in its main.py (which sets
    pin_memory=True for its CUDA training loop). views=1 gives one view of the same transform."""
    import random

    import torch
    import torchvision.datasets as datasets
    import torchvision.transforms as T
    from PIL import ImageFilter

    class GaussianBlur:  # moco/loader.py
        def __init__(self, sigma=(0.1, 2.0)):
            self.sigma = sigma

        def __call__(self, x):
            return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    class TwoCropsTransform:
        def __init__(self, t):
            self.t = t

        def __call__(self, x):
            return [self.t(x) for _ in range(views)]

    aug = T.Compose([
        T.RandomResizedCrop(res, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur([0.1, 2.0])], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    ds = datasets.ImageFolder(str(src), TwoCropsTransform(aug))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0,
                                       pin_memory=pin_memory)


def _time_epochs(loader, device, epochs: int, set_epoch=None) -> tuple[float, int]:
    """Warm-up epoch (worker start, ffcv compile), then images/s over `epochs` timed epochs."""
    for e in range(epochs + 1):
        if set_epoch:
            set_epoch(e)
        if e == 1:
            _sync(device)
            t0, n = time.perf_counter(), 0
        for b in loader:
            if e >= 1:
                views = b.views if hasattr(b, "views") else b[0]
                n += views[0].shape[0]
        if e == 0:
            continue
    _sync(device)
    dt = time.perf_counter() - t0
    return n / dt, n


def _loader_for(be: str, args, data: Path, src: Path | None, device):
    """A fresh loader of backend `be` (or the official baseline), with its epoch-setting hook."""
    import torch

    from fastdisco.config import DataConfig
    from fastdisco.loader import make_loader

    if be == OFFICIAL:
        return official_baseline_loader(src, args.batch, args.workers, args.resolution), None, torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backend, _, variant = be.partition(":")
    cfg = DataConfig(path=str(data), backend=backend, recipe="mocov2", resolution=args.resolution,
                     batch_size=args.batch, num_workers=args.workers, dali_threads=args.workers,
                     **LOADER_VARIANTS[variant])
    ld = make_loader(cfg, device=device, dtype=dtype)
    return ld, ld.set_epoch, device


OFFICIAL = "official_disco_torchvision"
# --backends may name a variant as backend:variant, e.g. torch:full_decode; its row is compared
# with the plain backend's in the same run (vs_<variant> on the plain backend's row)
LOADER_VARIANTS = {
    "": {},
    "full_decode": {"reduced_decode": False},         # torch: every JPEG decoded at full size (before 2026-12)
    "cpu_decode": {"decode_device": "cpu"},           # torch / dali on CUDA: decode on the CPU
    "no_prefetch": {"prefetch": 0},                   # CUDA: no batches made ahead on a side stream
}


def run_loader(args) -> list[dict]:
    """Each backend and the official pipeline, `--repeats` rounds in rotated order (a fresh loader
    each time: one warm-up epoch, then `--epochs` timed ones); the median of the rounds is
    reported, and the ratio to the official pipeline is taken between medians of the same run."""
    import statistics

    import torch

    from fastdisco.errors import FastdiscoError

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    src, data = dataset(args)
    common = dict(mode="loader", views=2, resolution=args.resolution, batch=args.batch, workers=args.workers,
                  device=str(device), recipe="mocov2", epochs_timed=args.epochs, repeats=args.repeats,
                  run_id=args.run_id)
    if device.type == "cpu":
        common["note"] = cpu_note()
    names = [b for b in args.backends.split(",") if b] + ([OFFICIAL] if src is not None else [])
    rounds: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for r in range(args.repeats):
        k = r % len(names)
        for be in names[k:] + names[:k]:  # rotated: no backend always runs first (or last)
            if be in rounds and rounds[be] is None:
                continue
            try:
                ld, set_epoch, dev = _loader_for(be, args, data, src, device)
            except FastdiscoError as e:
                print(f"skip {be}: {e}")
                rounds[be] = None
                continue
            ips, counts[be] = _time_epochs(ld, dev, args.epochs, set_epoch)
            if hasattr(ld, "close"):  # fastdisco loaders: workers / DALI pipeline stop now, before the
                ld.close()            # next loader forks its workers (a forked live pipeline segfaults)
            del ld  # the official DataLoader's workers end with its last reference
            rounds.setdefault(be, []).append(ips)
            print(f"round {r + 1}/{args.repeats} {be:>26}: {ips:8.1f} source images/s")
    rows = []
    for be in names:
        if not rounds.get(be):
            continue
        med = statistics.median(rounds[be])
        rows.append({**common, "backend": be, "images_per_s": round(med, 1), "images": counts[be],
                     "rounds_images_per_s": [round(x, 1) for x in rounds[be]],
                     "data": "original_jpeg" if be == OFFICIAL else "prepared",
                     **({"device": "cpu"} if be == OFFICIAL else {})})
    by_name = {r["backend"]: r for r in rows}
    for r in rows:  # each change as a ratio: the plain backend over its variant, medians of this run
        backend, _, variant = r["backend"].partition(":")
        if variant and backend in by_name:
            plain = by_name[backend]
            plain[f"vs_{variant}"] = round(plain["images_per_s"] / r["images_per_s"], 2)
            print(f"{backend} / {r['backend']} = {plain[f'vs_{variant}']:.2f}x")
    base = next((r for r in rows if r["backend"] == OFFICIAL), None)
    print(f"median of {args.repeats} rounds:")
    for r in rows:
        if base is not None and r is not base:
            r["vs_official"] = round(r["images_per_s"] / base["images_per_s"], 2)
            per_round = [x / y for x, y in zip(r["rounds_images_per_s"], base["rounds_images_per_s"])]
            r["vs_official_min_round"] = round(min(per_round), 2)
        extra = f"  {r['vs_official']:.2f}x official (worst round {r['vs_official_min_round']:.2f}x)" \
            if "vs_official" in r else ""
        print(f"{r['backend']:>26}: {r['images_per_s']:8.1f} source images/s{extra}")
    return rows


# --------------------------------------------------------------------------- model / step / baseline
def _device(args):
    import torch

    return torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


def bench_config(args, device):
    """The engine's Config for this benchmark: CLI options, then --set overrides."""
    from fastdisco.config import Config, apply_overrides, parse_set

    cfg = Config()
    compile_ = args.compile if args.compile is not None else device.type == "cuda"
    apply_overrides(cfg, {
        "data": {"path": "", "backend": args.backend, "recipe": "ssld" if args.method == "ssld" else "mocov2",
                 "resolution": args.resolution, "batch_size": args.batch, "num_workers": args.workers,
                 "dali_threads": args.workers},
        "model": {"student": args.student, "teacher": args.teacher},
        "method": {"name": args.method, "loss_impl": args.loss_impl},
        "train": {"precision": args.precision, "channels_last": args.channels_last, "compile": compile_,
                  "device": device.type},
    })
    for item in args.set:
        apply_overrides(cfg, parse_set(item))
    return cfg


def _free() -> None:
    """Let the previous sub-run's models, loader workers and cached GPU memory go first, so
    they neither compete for CPU cores nor count in the next peak-memory figure."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _describe(cfg, device, args, mode: str, impl: str, backend: str | None) -> dict:
    import torch

    from fastdisco.models.methods import METHODS

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    row = dict(mode=mode, impl=impl, method=cfg.method.name,
               teacher=cfg.model.teacher if METHODS[cfg.method.name].needs_teacher else None,
               student=cfg.model.student, resolution=cfg.data.resolution, batch=cfg.data.batch_size,
               backend=backend, workers=cfg.data.num_workers if backend else None,
               precision=cfg.train.precision, compile=cfg.train.compile, loss_impl=cfg.method.loss_impl,
               loss_kernel=_loss_kernel(cfg.method.loss_impl, device),
               channels_last=cfg.train.channels_last, fused_optim=cfg.optim.fused,
               queue_size=cfg.method.queue_size, device=str(device), device_name=name,
               timer="cuda_events" if device.type == "cuda" else "wall", warmup=args.warmup, steps=args.steps,
               run_id=args.run_id)
    if device.type == "cpu":
        row["note"] = cpu_note()
    return row


def _loss_kernel(impl: str, device) -> str:
    """What fastdisco.kernels' dispatch will run: "triton" (fused) or "torch" (reference)."""
    import importlib.util

    if impl == "auto":
        return "triton" if device.type == "cuda" and importlib.util.find_spec("triton") else "torch"
    return impl


def _measure(args, setup, fn, batch, row: dict, loading=None) -> dict:
    """Time `fn` (one training step), then optionally count FLOPs, break the step into parts
    and profile it. `loading` (a callable giving one batch) adds the loader to the breakdown."""
    import statistics

    import torch

    from bench_step import breakdown, count_flops, peak_bf16_tflops, profile_calls, time_calls

    dev = setup.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    ms = time_calls(fn, dev, args.warmup, args.steps)
    total_s = sum(ms) / 1e3
    row.update(images_per_s=round(row["batch"] * len(ms) / total_s, 2), step_ms_mean=round(total_s * 1e3 / len(ms), 3),
               step_ms_median=round(statistics.median(ms), 3),
               peak_mem_mib=round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None)
    if args.flops:
        flops = count_flops(setup, batch)
        achieved = flops / (total_s / len(ms)) / 1e12
        peak = peak_bf16_tflops(row["device_name"]) if dev.type == "cuda" else None
        row.update(gflop_per_step=round(flops / 1e9, 3), tflops_achieved=round(achieved, 4),
                   peak_bf16_tflops=peak, peak_share=round(achieved / peak, 4) if peak else None)
    if args.breakdown:
        n = max(3, args.steps // 2)
        parts = breakdown(setup, batch, warmup=1, steps=n)
        if loading is not None:
            parts["loading"] = round(statistics.median(time_calls(loading, dev, 1, n)), 3)
        tot = sum(parts.values())
        row.update(breakdown_ms=parts, breakdown_share={k: round(v / tot, 4) for k, v in parts.items()},
                   breakdown_sum_vs_step=round(tot / row["step_ms_median"], 3))
    if args.profile:
        out = Path(args.profile)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / ".gitignore").exists():
            (out / ".gitignore").write_text("*\n")  # traces are large: never committed
        trace = out / f"{row['run_id']}_{row['mode']}_{row['impl']}.json"
        table, top = profile_calls(fn, dev, min(args.steps, 5), str(trace))
        print(table)
        row.update(profile_trace=str(trace), profile_top=top[:10])
    return row


def _report(row: dict) -> None:
    extra = f", peak {row['peak_mem_mib']} MiB" if row.get("peak_mem_mib") else ""
    if row.get("peak_share") is not None:
        extra += f", {100 * row['peak_share']:.1f}% of bf16 peak"
    print(f"{row['mode']:>6} {row['impl']:>9} ({row['backend'] or 'synthetic'}): {row['images_per_s']:9.2f} images/s, "
          f"{row['step_ms_median']:.1f} ms/step{extra}")
    if row.get("breakdown_ms"):
        print("        parts (ms): " + ", ".join(f"{k} {v}" for k, v in row["breakdown_ms"].items()))


def _run_model(args, impl: str) -> dict:
    from baseline_step import baseline_config, official_backend_flags
    from bench_step import build_setup, synthetic_batch, train_step
    from fastdisco.models.methods import METHODS

    _free()
    device = _device(args)
    cfg = bench_config(args, device)
    if impl == "baseline":
        cfg = baseline_config(cfg)
    setup = build_setup(cfg, device)
    if impl == "baseline":
        official_backend_flags()
    batch = synthetic_batch(setup, cfg.data.batch_size, cfg.data.resolution, METHODS[cfg.method.name].num_views)
    row = _measure(args, setup, lambda: train_step(setup, batch), batch, _describe(cfg, device, args, "model", impl, None))
    _report(row)
    return row


def _run_step(args, impl: str) -> dict | None:
    import torch

    from baseline_step import BASELINE_BACKEND, baseline_config, official_backend_flags, official_batches
    from bench_step import build_setup, train_step
    from fastdisco.loader import make_loader
    from fastdisco.models.methods import METHODS

    _free()
    device = _device(args)
    src, data = dataset(args)
    cfg = bench_config(args, device)
    if impl == "baseline":
        if src is None:
            print("skip the baseline step: it reads the original JPEG folders; give --src (or --synthetic N)")
            return None
        cfg = baseline_config(cfg)
        setup = build_setup(cfg, device)
        official_backend_flags()
        dl = official_baseline_loader(src, cfg.data.batch_size, cfg.data.num_workers, cfg.data.resolution,
                                      views=METHODS[cfg.method.name].num_views, pin_memory=device.type == "cuda")
        batches, backend = official_batches(dl, device), BASELINE_BACKEND
        next_batch = lambda: next(batches)  # noqa: E731
    else:
        cfg.data.path = str(data)
        setup = build_setup(cfg, device)
        loader = make_loader(cfg.data, device=device, dtype=setup.view_dtype)
        state = {"epoch": 0, "it": None}
        loader.set_epoch(0)
        state["it"] = iter(loader)
        backend = cfg.data.backend

        def next_batch():
            try:
                return next(state["it"])
            except StopIteration:  # the engine's epoch handoff
                state["epoch"] += 1
                loader.set_epoch(state["epoch"])
                state["it"] = iter(loader)
                return next(state["it"])
    first = next_batch()
    row = _describe(cfg, device, args, "step", impl, backend)
    row = _measure(args, setup, lambda: train_step(setup, next_batch()), first, row, loading=next_batch)
    _report(row)
    return row


def _ratios(rows: list[dict]) -> None:
    """vs_baseline (same mode) and, for steps, vs_model: all from this invocation."""
    by = {(r["mode"], r.get("impl")): r for r in rows if "impl" in r}
    for (mode, impl), r in by.items():
        base = by.get((mode, "baseline"))
        if impl == "fastdisco" and base:
            r["vs_baseline"] = round(r["images_per_s"] / base["images_per_s"], 3)
            print(f"{mode}: fastdisco / baseline = {r['vs_baseline']:.2f}x")
        model = by.get(("model", impl))
        if mode == "step" and model:
            r["vs_model"] = round(r["images_per_s"] / model["images_per_s"], 3)
            print(f"step / model ({impl}) = {r['vs_model']:.2f}")


def run_model(args) -> list[dict]:
    rows = [_run_model(args, "fastdisco")] + ([_run_model(args, "baseline")] if args.baseline else [])
    _ratios(rows)
    return rows


def run_step(args) -> list[dict]:
    rows = [_run_step(args, "fastdisco")] + ([_run_step(args, "baseline")] if args.baseline else [])
    rows = [r for r in rows if r]
    _ratios(rows)
    return rows


def run_baseline(args) -> list[dict]:
    row = _run_step(args, "baseline")
    return [row] if row else []


def run_all(args) -> list[dict]:
    steps = [_run_model(args, "fastdisco"), _run_step(args, "fastdisco")]
    if args.baseline:
        steps += [_run_model(args, "baseline"), _run_step(args, "baseline")]
    steps = [r for r in steps if r]
    _ratios(steps)
    # The loader comparison last: loaders of several backends leave thread pools behind (ffcv's
    # numba/OpenMP threads, DALI's) that would otherwise compete with the timed training steps.
    return run_loader(args) + steps


MODES = {"loader": run_loader, "model": run_model, "step": run_step, "baseline": run_baseline, "all": run_all}
DATA_MODES = ("loader", "step", "baseline", "all")


def main(argv=None) -> int:
    import datetime

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="loader")
    p.add_argument("--data", default="", help="prepared dataset (fastdisco prepare-data output)")
    p.add_argument("--src", default="", help="the original JPEG class folders, for the official baseline")
    p.add_argument("--synthetic", type=int, default=0, help="make N synthetic 500x375 JPEGs and prepare them")
    p.add_argument("--backends", default="torch,dali,ffcv", help="loader mode: backends to compare")
    p.add_argument("--backend", default="dali", help="step mode: the loader backend")
    p.add_argument("--batch", type=int, default=64, help="per-device batch (source images)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--epochs", type=int, default=2, help="loader mode: timed epochs after one warm-up epoch")
    p.add_argument("--repeats", type=int, default=3,
                   help="loader mode: rounds over all backends (rotated order); medians are reported")
    p.add_argument("--device", default="auto")
    p.add_argument("--method", choices=("disco", "ssld", "mocov2"), default="disco")
    p.add_argument("--teacher", default="resnet50", help="timm name (randomly initialised: timing only)")
    p.add_argument("--student", default="efficientnet_b0", help="timm name")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile student/key encoder/teacher (default: on CUDA only)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--loss-impl", choices=("auto", "torch", "triton"), default="auto",
                   help="fused Triton losses (auto: on CUDA) or the PyTorch reference")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="model/step: also run the official-DisCo baseline in this invocation")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, cudnn autotune, workers)")
    p.add_argument("--flops", action=argparse.BooleanOptionalAction, default=None,
                   help="count FLOPs and the share of the GPU's bf16 peak (default: on CUDA)")
    p.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=None,
                   help="time teacher / student / momentum encoder / loss / optimizer / loading (default: on CUDA)")
    p.add_argument("--profile", nargs="?", const=str(Path(__file__).resolve().parent / "results" / "traces"),
                   default=None, metavar="DIR", help="write torch.profiler traces to DIR and print the top ops")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any other fastdisco config key, e.g. method.queue_size=16384")
    p.add_argument("--results-dir", default=None, help="where throughput.jsonl is appended (default benchmarks/results)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if args.mode in DATA_MODES and not args.synthetic and not args.data and not (args.mode == "baseline" and args.src):
        p.error("give --data (and --src) or --synthetic N")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    cuda = _device(args).type == "cuda"
    args.flops = cuda if args.flops is None else args.flops
    args.breakdown = cuda if args.breakdown is None else args.breakdown
    args.run_id = datetime.datetime.now().strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    from fastdisco.errors import FastdiscoError

    try:
        rows = MODES[args.mode](args)
    except FastdiscoError as e:
        print(f"throughput: {e}", file=sys.stderr)
        return 2
    finally:
        if getattr(args, "_tmp", None) is not None:
            args._tmp.cleanup()
    if rows and not args.no_save:
        from results_io import append_rows

        print("appended to", append_rows("throughput", rows, args.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
