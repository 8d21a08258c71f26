"""Benchmark of the fused loss kernels (fastdisco.kernels) against the eager PyTorch reference and
torch.compile of the reference: forward, backward and forward+backward time, and the peak extra
memory of forward+backward.

    python benchmarks/bench_losses.py            # CUDA, bf16, the sizes of issue 3
    python benchmarks/bench_losses.py --quick    # tiny sizes; on CPU: reference vs compiled only
    python benchmarks/bench_losses.py --plot     # also write benchmarks/results/losses_<device>.png

Rows go to benchmarks/results/losses.jsonl through results_io.append_rows, stamped with device,
versions, commit and date. CUDA timings use CUDA events; CPU timings are wall clock and are
labelled timer="wall": they say nothing about GPU speed. The Triton kernels are not timed on CPU
(the interpreter is a debugging tool, not an implementation).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cases(quick: bool) -> list[dict]:
    """(loss, sizes) to measure. InfoNCE: MoCo queue K = 65536; KL: C = 1000 classes."""
    if quick:
        ns, ds, K, C = [64], [32], 512, 100
    else:
        ns, ds, K, C = [256, 1024, 4096], [128, 256], 65536, 1000
    cases = []
    for n in ns:
        for d in ds:
            cases.append(dict(loss="infonce", N=n, D=d, K=K))
        for d in ds:
            cases.append(dict(loss="embedding_distill", N=n, D=d))
        cases.append(dict(loss="symmetric_kl", N=n, C=C))
        cases.append(dict(loss="soft_ce", N=n, C=C))
    return cases


def _make(case: dict, impl: str, device, dtype):
    """Inputs (the ones a training step differentiates require grad) and a zero-arg closure."""
    import torch
    import torch.nn.functional as F

    import fastdisco.kernels as K

    g = torch.Generator().manual_seed(0)
    N = case["N"]
    fns = {
        "infonce": (K.infonce_loss, K.infonce_loss_reference),
        "embedding_distill": (K.embedding_distill_loss, K.embedding_distill_loss_reference),
        "symmetric_kl": (K.symmetric_kl_loss, K.symmetric_kl_loss_reference),
        "soft_ce": (K.soft_ce_loss, K.soft_ce_loss_reference),
    }[case["loss"]]
    if impl == "triton":
        fn = lambda *a: fns[0](*a, impl="triton")  # noqa: E731
    elif impl == "torch":
        fn = fns[1]
    else:
        fn = _compiled(fns[1])
    if case["loss"] == "infonce":
        q = torch.randn(N, case["D"], generator=g).to(device, dtype).requires_grad_()
        k = torch.randn(N, case["D"], generator=g).to(device, dtype)  # key encoder: no grad
        queue = F.normalize(torch.randn(case["K"], case["D"], generator=g), dim=1).to(device, dtype)
        return [q], lambda: fn(q, k, queue)
    width = case.get("D") or case["C"]
    scale = 1.0 if case["loss"] == "embedding_distill" else 3.0
    s = (torch.randn(N, width, generator=g) * scale).to(device, dtype).requires_grad_()
    t = (torch.randn(N, width, generator=g) * scale).to(device, dtype)  # frozen teacher
    return [s], lambda: fn(s, t)


_COMPILED: dict = {}


def _compiled(fn):
    import torch

    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


class _Timer:
    """CUDA events on GPU (no host sync inside the timed region), perf_counter on CPU."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def start(self):
        if self.cuda:
            self.a = self.torch.cuda.Event(enable_timing=True)
            self.b = self.torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.b.record()
            self.b.synchronize()
            return self.a.elapsed_time(self.b)
        return (time.perf_counter() - self.t0) * 1e3


def measure(case: dict, impl: str, device, dtype, warmup: int, iters: int) -> dict:
    import torch

    leaves, run = _make(case, impl, device, dtype)

    def zero():
        for x in leaves:
            x.grad = None

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):  # also triggers Triton / inductor compilation
        zero()
        run().backward()
    sync()
    timer = _Timer(device)
    fwd, bwd, both = [], [], []
    for _ in range(iters):
        zero()
        sync()
        timer.start()
        loss = run()
        fwd.append(timer.stop())
        timer.start()
        loss.backward()
        bwd.append(timer.stop())
        zero()
        sync()
        timer.start()
        run().backward()
        both.append(timer.stop())
    peak = None
    if device.type == "cuda":
        zero()
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run().backward()
        sync()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return dict(fwd_ms=statistics.median(fwd), bwd_ms=statistics.median(bwd),
                fwd_bwd_ms=statistics.median(both), peak_extra_mib=peak)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({_label(r) for r in rows}, key=lambda s: (s.split()[0], len(s), s))
    impls = sorted({r["impl"] for r in rows})
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.6 * len(labels)), 9))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        by = {_label(r): r for r in rows if r["impl"] == impl}
        xs = [i + j * width for i in range(len(labels))]
        axes[0].bar(xs, [by[l]["fwd_bwd_ms"] if l in by else 0 for l in labels], width, label=impl)
        axes[1].bar(xs, [(by[l]["peak_extra_mib"] or 0) if l in by else 0 for l in labels], width, label=impl)
    dev = rows[0]["device"]
    axes[0].set_ylabel("forward + backward (ms)")
    axes[1].set_ylabel("peak extra memory (MiB)")
    if not any(r["peak_extra_mib"] for r in rows):
        axes[1].text(0.5, 0.5, "peak memory is measured on CUDA only", ha="center", transform=axes[1].transAxes)
    for ax in axes:
        if any(b.get_height() > 0 for b in ax.patches):
            ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=60, ha="right", fontsize=7)
        ax.legend()
    what = "quick sizes, " if rows[0]["quick"] else ""
    axes[0].set_title(f"fastdisco loss kernels, {rows[0]['dtype']} on {dev} ({what}timer: {rows[0]['timer']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _label(r: dict) -> str:
    sizes = " ".join(f"{k}={r[k]}" for k in ("N", "D", "K", "C") if r.get(k) is not None)
    return f"{r['loss']} {sizes}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, few iterations (exercises the script)")
    p.add_argument("--plot", action="store_true", help="write benchmarks/results/losses_<device>.png")
    p.add_argument("--impls", default=None, help="comma list of triton,torch,compiled")
    p.add_argument("--only", default=None, help="comma list of losses (infonce,embedding_distill,symmetric_kl,soft_ce)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--no-save", action="store_true", help="print only, append no rows")
    p.add_argument("--results-dir", default=None, help="where losses.jsonl is appended (default benchmarks/results)")
    args = p.parse_args(argv)

    import torch

    from results_io import RESULTS_DIR, append_rows

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    impls = args.impls.split(",") if args.impls else (["triton", "torch", "compiled"] if device.type == "cuda"
                                                      else ["torch", "compiled"])
    if device.type != "cuda" and "triton" in impls:
        print("note: triton is not timed on CPU (interpreter only); dropped", file=sys.stderr)
        impls = [i for i in impls if i != "triton"]
    iters = args.iters or (10 if args.quick or device.type == "cpu" else 20)
    warmup = 2 if args.quick else 5
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = 64  # one graph per benchmarked shape
    cases = _cases(args.quick or device.type == "cpu")
    if args.only:
        cases = [c for c in cases if c["loss"] in args.only.split(",")]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for case in cases:
        for impl in impls:
            row = dict(bench="losses", **case, impl=impl, dtype=str(dtype).replace("torch.", ""),
                       device=dev_name, timer="cuda_events" if device.type == "cuda" else "wall",
                       quick=bool(args.quick), iters=iters)
            if device.type != "cuda":
                row["note"] = "CPU wall clock (shared machine): exercises the script, not a speed claim"
            try:
                row.update(measure(case, impl, device, dtype, warmup, iters))
            except Exception as e:  # a backend that cannot run here is a recorded fact, not a crash
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            mem = row.get("peak_extra_mib")
            print(f"{_label(row):42s} {impl:9s} " + (
                f"fwd {row['fwd_ms']:8.3f}  bwd {row['bwd_ms']:8.3f}  fwd+bwd {row['fwd_bwd_ms']:8.3f} ms"
                + (f"  peak +{mem:9.1f} MiB" if mem is not None else "") if "error" not in row else row["error"]),
                flush=True)
    if not args.no_save:
        print("appended to", append_rows("losses", rows, args.results_dir))
    if args.plot:
        ok = [r for r in rows if "error" not in r]
        if ok:
            out = RESULTS_DIR / f"losses_{dev_name.replace(' ', '_')}.png"
            plot(ok, out)
            print("plot", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
