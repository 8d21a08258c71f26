"""Turn the stored benchmark rows (benchmarks/results/*.jsonl) into benchmarks/README.md and PNG
plots. Nothing is measured here: every number in the README is a stored row, shown with the
device, commit and date it came from.

    python benchmarks/report.py                          # benchmarks/results -> benchmarks/README.md
    python benchmarks/report.py --results-dir D --out R.md --plots-dir P
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_io import read_rows  # noqa: E402

MAX_ROWS = 40  # newest rows per table and device; older ones stay in the .jsonl files

GPU_COMMANDS = """\
```bash
# full comparison (loader, model-only, full step, each beside the official-DisCo baseline), DisCo
# ResNet-50 -> EfficientNet-B0, 224 px, bf16, compiled, fused losses; with the per-part breakdown,
# FLOP count and share of the GPU's bf16 peak (on by default on CUDA)
python benchmarks/throughput.py --mode all --data PREPARED --src JPEG_FOLDERS --backends dali,torch \\
    --backend dali --workers 12 --batch 256 --resolution 224 --method disco --teacher resnet50 \\
    --student efficientnet_b0 --steps 50 --warmup 15
# other students and the SSLD recipe
python benchmarks/throughput.py --mode step --data PREPARED --src JPEG_FOLDERS --batch 256 --student resnet18
python benchmarks/throughput.py --mode step --data PREPARED --src JPEG_FOLDERS --batch 256 --student mobilenetv3_large_100
python benchmarks/throughput.py --mode step --data PREPARED --src JPEG_FOLDERS --batch 256 --method ssld \\
    --teacher resnet50 --student mobilenetv3_large_100 --set model.num_classes=1000
# where the time goes: a torch.profiler trace (open in Perfetto / chrome://tracing) and the top kernels
python benchmarks/throughput.py --mode model --batch 256 --profile
# switches one at a time: --no-compile, --loss-impl torch, --no-channels-last, --precision fp32
python benchmarks/bench_losses.py --plot      # the fused loss kernels
python benchmarks/report.py                   # rebuild this page
```
Without PREPARED / JPEG_FOLDERS, `--synthetic 4096` makes 500x375 JPEGs and prepares them first.
Where DALI is not installed use `--backend torch` (its `crop_on=auto` crops on the GPU)."""


# --------------------------------------------------------------------------- helpers
def device_label(row: dict) -> str:
    dev = row.get("provenance", {}).get("device", {})
    name = dev.get("device", "unknown")
    return f"GPU: {name}" if dev.get("cuda") else f"CPU: {name}"


def is_cpu(row: dict) -> bool:
    return not row.get("provenance", {}).get("device", {}).get("cuda")


def commit(row: dict) -> str:
    git = row.get("provenance", {}).get("git", {})
    sha = (git.get("commit") or "?")[:7]
    return sha + ("+dirty" if git.get("dirty") else "")


def date(row: dict) -> str:
    return (row.get("provenance", {}).get("date") or "?")[:16].replace("T", " ")


def fmt(v) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.1f}" if abs(v) >= 10 else (f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3g}")
    return str(v).replace("|", "/")


def ratio(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c.replace("|", "/") for c in r) + " |"
            for r in rows]
    return out


def by_device(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by device (GPUs first), newest MAX_ROWS of each, in time order."""
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r.get("provenance", {}).get("date", "")):
        groups.setdefault(device_label(r), []).append(r)
    return {k: v[-MAX_ROWS:] for k, v in sorted(groups.items(), key=lambda kv: kv[0].startswith("CPU"))}


def device_heading(label: str) -> str:
    if label.startswith("CPU"):
        return (f"#### {label} — CPU rows: wall clock on a shared machine, noisy; compare ratios within "
                "one run, not absolute numbers. Not GPU results.")
    return f"#### {label}"


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")[:60]


CONFIG_KEYS = ("mode", "impl", "method", "teacher", "student", "resolution", "batch", "backend", "workers",
               "precision", "compile", "loss_impl", "channels_last")


def spread(rows: list[dict]) -> float | None:
    """Largest max/min images/s over runs of the same configuration (None if none repeats)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in CONFIG_KEYS), []).append(r["images_per_s"])
    ratios = [max(v) / min(v) for v in groups.values() if len(v) > 1 and min(v) > 0]
    return max(ratios) if ratios else None


# --------------------------------------------------------------------------- tables
def step_section(rows: list[dict]) -> list[str]:
    out = ["## Training step: model-only ceiling and full step, beside the official-DisCo baseline", "",
           "`model`: synthetic batches already on the device; `step`: batches from the prepared data through "
           "`make_loader` (or, for the baseline, torchvision ImageFolder + PIL workers over the original JPEGs). "
           "Images/s count source images. `vs baseline` and `vs model` are ratios measured in the same run.", ""]
    if not rows:
        return out + ["No rows yet.", ""]
    hdr = ["run", "mode", "impl", "method", "teacher → student", "px", "batch", "loader", "precision",
           "compile", "loss", "ch-last", "images/s", "ms/step", "vs baseline", "vs model", "peak MiB",
           "% bf16 peak", "commit", "date"]
    for label, rs in by_device(rows).items():
        worst = spread(rs)
        note = ([f"Identical configurations measured in different runs here differ by up to {worst:.1f}x in "
                 "images/s: treat single rows as rough.", ""] if worst and worst > 1.0 else [])
        body = []
        for r in rs:
            pair = f"{r.get('teacher') or '–'} → {r.get('student')}"
            share = None if r.get("peak_share") is None else f"{100 * r['peak_share']:.1f}%"
            body.append([r.get("run_id", "–"), r["mode"], r.get("impl"), r.get("method"), pair, r.get("resolution"),
                         r.get("batch"), r.get("backend") or "synthetic", r.get("precision"), r.get("compile"),
                         r.get("loss_impl"), r.get("channels_last"), r.get("images_per_s"), r.get("step_ms_median"),
                         ratio(r.get("vs_baseline")), ratio(r.get("vs_model")), r.get("peak_mem_mib"),
                         share or "–", commit(r), date(r)])
        out += [device_heading(label), ""] + note + table(hdr, body) + [""]
    parts = [r for r in rows if r.get("breakdown_ms")]
    if parts:
        out += ["### Where the step's time goes", "",
                "Each part timed in its own sub-run (median ms; share of their sum). `sum/step` near 1 means "
                "the parts add up to the step; below 1, the step has overhead the parts miss (sync, Python); "
                "above 1, the step overlaps work (e.g. loading in workers beside compute).", ""]
        names = ["teacher", "student_fwd_bwd", "momentum_encoder", "loss", "optimizer", "loading"]
        hdr = ["run", "mode", "impl", "method", "teacher → student"] + names + ["sum/step", "commit", "date"]
        for label, rs in by_device(parts).items():
            body = []
            for r in rs:
                ms, sh = r["breakdown_ms"], r["breakdown_share"]
                cells = [f"{ms[n]:.1f} ms ({100 * sh[n]:.0f}%)" if n in ms else "–" for n in names]
                body.append([r.get("run_id", "–"), r["mode"], r.get("impl"), r.get("method"),
                             f"{r.get('teacher') or '–'} → {r.get('student')}", *cells,
                             r.get("breakdown_sum_vs_step"), commit(r), date(r)])
            out += [device_heading(label), ""] + table(hdr, body) + [""]
    return out


def per_device_section(intro: list[str], rows: list[dict], hdr: list[str], cells) -> list[str]:
    """A section of one table per device: `intro` lines, then `cells(row)` under `hdr`."""
    out = list(intro)
    if not rows:
        return out + ["No rows yet.", ""]
    for label, rs in by_device(rows).items():
        out += [device_heading(label), ""] + table(hdr, [cells(r) for r in rs]) + [""]
    return out


def loader_section(rows: list[dict]) -> list[str]:
    intro = ["## Loading and augmentation only (`--mode loader`)", "",
             "Two MoCo v2 views per image; `vs official` = images/s over the official DisCo pipeline "
             "(torchvision ImageFolder + PIL in DataLoader workers over the original JPEGs) in the same run. "
             "Runs with several `rounds` (fresh loaders, rotated order) report the median images/s and "
             "`worst round`, the lowest per-round ratio.", ""]
    hdr = ["run", "backend", "data", "px", "batch", "workers", "rounds", "images/s", "vs official", "worst round",
           "commit", "date"]
    return per_device_section(intro, rows, hdr, lambda r: [
        r.get("run_id") or date(r), r.get("backend"), r.get("data"), r.get("resolution"), r.get("batch"),
        r.get("workers"), r.get("repeats", 1), r.get("images_per_s"), ratio(r.get("vs_official")),
        ratio(r.get("vs_official_min_round")), commit(r), date(r)])


def losses_section(rows: list[dict]) -> list[str]:
    intro = ["## Loss kernels (`benchmarks/bench_losses.py`)", "",
             "Fused Triton losses vs the eager PyTorch reference and its torch.compile; forward, backward and "
             "both (ms), and the peak extra memory of forward + backward (CUDA only).", ""]
    hdr = ["loss", "sizes", "impl", "dtype", "fwd ms", "bwd ms", "fwd+bwd ms", "peak extra MiB", "commit", "date"]
    return per_device_section(intro, rows, hdr, lambda r: [
        r.get("loss"), _sizes(r), r.get("impl"), r.get("dtype"), r.get("fwd_ms"), r.get("bwd_ms"),
        r.get("fwd_bwd_ms"), r.get("peak_extra_mib"), commit(r), date(r)])


def _sizes(r: dict) -> str:
    return " ".join(f"{k}={r[k]}" for k in ("N", "D", "K", "C") if k in r)


def prepare_section(rows: list[dict]) -> list[str]:
    intro = ["## prepare-data (`benchmarks/bench_prepare.py`)", "",
             "Source images/s converted, and the per-core decode + resize + encode bound it is compared to.", ""]
    hdr = ["measure", "images", "size", "max side", "workers", "images/s", "bound images/s", "efficiency",
           "commit", "date"]
    return per_device_section(intro, rows, hdr, lambda r: [
        r.get("measure"), r.get("images"), r.get("size"), r.get("max_side"), r.get("workers"),
        r.get("images_per_s"), r.get("bound_images_per_s"), r.get("efficiency"), commit(r), date(r)])


def augment_cpu_section(rows: list[dict]) -> list[str]:
    intro = ["## CPU augmentation kernel (`benchmarks/bench_augment_cpu.py`)", "",
             "The CPU loaders' photometric ops per 224 px view: the fused numba kernel "
             "(`fastdisco.augment.cpu_fused`) against the torch ops it replaces (its reference), timed "
             "alternately in one run. `case`: all MoCo v2 ops or one of them; `input`: uint8 NHWC crops, float "
             "crops, or the whole torch-worker pipeline (crop + ops + normalise).", ""]
    hdr = ["case", "input", "batch", "threads", "torch ms/view", "fused ms/view", "speedup", "numba", "commit",
           "date"]
    return per_device_section(intro, rows, hdr, lambda r: [
        r.get("case"), r.get("input"), r.get("batch"), r.get("threads"), r.get("torch_ms_per_view"),
        r.get("fused_ms_per_view"), ratio(r.get("speedup")), r.get("numba"), commit(r), date(r)])


def grouped_bn_section(rows: list[dict]) -> list[str]:
    intro = ["## Grouped BN without copies (`benchmarks/bench_grouped_bn.py`)", "",
             "Forward + backward of shuffle-BN's grouped BatchNorm: the copy-free layer "
             "(`fastdisco.models.grouped_bn`) against the reshape-and-copy one it replaced, timed alternately in "
             "one run. `one_view`: one layer call; `two_views`: old = one call per view, new = one batched call "
             "(`batched_views(2)`); `student_two_views`: the whole student on both views.", ""]
    hdr = ["label", "case", "layer / student", "size", "batch/view", "group", "dtype", "format", "old ms", "new ms",
           "speedup", "commit", "date"]
    return per_device_section(intro, rows, hdr, lambda r: [
        r.get("label"), r.get("case"), r.get("student") or f"C={r.get('channels')}", r.get("size") or r.get("resolution"),
        r.get("batch_per_view"), r.get("group"), r.get("dtype"), r.get("memory_format"), r.get("old_ms"),
        r.get("new_ms"), ratio(r.get("speedup")), commit(r), date(r)])


# --------------------------------------------------------------------------- plots
def _latest_run(rows: list[dict]) -> list[dict]:
    """Rows of the newest invocation (run_id, else the same date stamp)."""
    key = lambda r: r.get("run_id") or r.get("provenance", {}).get("date")  # noqa: E731
    last = key(max(rows, key=lambda r: r.get("provenance", {}).get("date", "")))
    return [r for r in rows if key(r) == last]


def plots(tp: list[dict], losses: list[dict], plots_dir: Path) -> list[Path]:
    """Per device: images/s of the newest run of each kind, its speed-ups over the baseline, and
    loss-kernel time / memory. Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for label, rs in by_device(tp).items():
        shown = []
        for kind in ("loader", "model", "step"):
            kr = [r for r in rs if r["mode"] == kind]
            if kr:
                shown += _latest_run(kr)
        if not shown:
            continue
        names = [f"loader: {r.get('backend')}" if r["mode"] == "loader" else
                 f"{r['mode']}: {r.get('impl')} / {r.get('backend') or 'synthetic'}" for r in shown]
        vals = [r["images_per_s"] for r in shown]
        colors = ["tab:gray" if r.get("impl") == "baseline" or r.get("backend") == "official_disco_torchvision"
                  else "tab:blue" for r in shown]
        fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 * len(shown) + 1.8))
        axes[0].barh(names, vals, color=colors)
        axes[0].set_xlabel("source images/s")
        axes[0].invert_yaxis()
        axes[0].set_title("throughput (gray: official-DisCo baseline)", fontsize=9)
        sp = [(n, r.get("vs_baseline") or r.get("vs_official")) for n, r in zip(names, shown)
              if r.get("vs_baseline") or r.get("vs_official")]
        if sp:
            axes[1].barh([n for n, _ in sp], [v for _, v in sp], color="tab:green")
            axes[1].axvline(1.0, color="k", lw=0.8)
            axes[1].invert_yaxis()
        axes[1].set_xlabel("speed-up over the baseline (same run)")
        fig.suptitle(label + (" — CPU, shared machine, noisy" if label.startswith("CPU") else ""), fontsize=10)
        fig.tight_layout()
        path = plots_dir / f"throughput_{slug(label)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    for label, rs in by_device(losses).items():
        cases = sorted({(r.get("loss"), _sizes(r)) for r in rs})
        impls = sorted({r.get("impl") for r in rs})
        latest = {(r.get("loss"), _sizes(r), r.get("impl")): r for r in rs}
        mem = any(r.get("peak_extra_mib") is not None for r in rs)
        fig, axes = plt.subplots(1, 2 if mem else 1, figsize=(12 if mem else 7, 0.45 * len(cases) * len(impls) + 1.8),
                                 squeeze=False)
        for j, (field, xlabel) in enumerate([("fwd_bwd_ms", "forward + backward, ms"),
                                             ("peak_extra_mib", "peak extra memory, MiB")][: 2 if mem else 1]):
            ax = axes[0][j]
            h = 0.8 / max(1, len(impls))
            for i, impl in enumerate(impls):
                ys = [c + i * h for c in range(len(cases))]
                xs = [(latest.get((lo, sz, impl)) or {}).get(field) or 0 for lo, sz in cases]
                ax.barh(ys, xs, height=h, label=impl)
            ax.set_yticks([c + 0.4 - h / 2 for c in range(len(cases))], [f"{lo} {sz}" for lo, sz in cases], fontsize=7)
            ax.set_xscale("log" if field == "fwd_bwd_ms" else "linear")
            ax.set_xlabel(xlabel)
            ax.invert_yaxis()
            ax.legend(fontsize=7)
        fig.suptitle("loss kernels — " + label + (" (CPU wall clock, noisy)" if label.startswith("CPU") else ""),
                     fontsize=10)
        fig.tight_layout()
        path = plots_dir / f"losses_report_{slug(label)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


# --------------------------------------------------------------------------- page
def build(results_dir: Path, out: Path, plots_dir: Path) -> str:
    tp = read_rows("throughput", results_dir)
    losses = read_rows("losses", results_dir)
    prep = read_rows("prepare", results_dir)
    aug = read_rows("augment_cpu", results_dir)
    gbn = read_rows("grouped_bn", results_dir)
    steps = [r for r in tp if r.get("mode") in ("model", "step")]
    loaders = [r for r in tp if r.get("mode") == "loader"]
    pngs = plots(tp, losses, plots_dir)
    any_gpu = any(not is_cpu(r) for r in tp + losses + prep)
    lines = ["# fastdisco benchmarks", "",
             "Generated by `python benchmarks/report.py` from the rows in `benchmarks/results/*.jsonl`; do not "
             "edit by hand. Every row was appended by a benchmark script, stamped with its device, package "
             "versions, git commit (`+dirty`: uncommitted changes) and date; tables group rows by device.", ""]
    if not any_gpu:
        lines += ["**All rows so far come from a CPU machine (2 cores shared with other jobs).** They exercise the "
                  "scripts and give side-by-side ratios measured in one run; they say nothing about GPU speed. "
                  "The GPU targets (DisCo ResNet-50 → EfficientNet-B0, 224 px, bf16: full step ≥ 3x the "
                  "official-DisCo baseline and within 5% of model-only) have not been measured yet.", "",
                  "Known CPU artefact: in `--mode all` the first set-up built in the process (fastdisco `model`) "
                  "ran 2-3x slower than the later ones (its teacher sub-run alone ~9x), in both runs so far; a "
                  "standalone `--mode step` run was as slow. Not yet explained (oneDNN bf16 warm-up is a "
                  "suspect), so the CPU `model` ratios and `vs model` are not meaningful.", ""]
    lines += ["## To run on a GPU", "", GPU_COMMANDS, ""]
    lines += step_section(steps) + loader_section(loaders) + augment_cpu_section(aug) + grouped_bn_section(gbn) + losses_section(losses) + prepare_section(prep)
    if pngs:
        lines += ["## Plots", ""]
        for p in pngs:
            rel = os.path.relpath(p, out.parent)
            lines += [f"![{p.stem}]({rel})", ""]
    text = "\n".join(lines).rstrip() + "\n"
    out.write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default=str(HERE / "results"))
    p.add_argument("--out", default=str(HERE / "README.md"))
    p.add_argument("--plots-dir", default=None, help="where the PNGs go (default: the results dir)")
    args = p.parse_args(argv)
    res = Path(args.results_dir)
    build(res, Path(args.out), Path(args.plots_dir) if args.plots_dir else res)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
