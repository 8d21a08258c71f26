"""Tables and plots for docs/results.md from benchmarks/results/repro_fmnist.jsonl (issues 8, 14).

    python benchmarks/repro/report.py --scale cpu64     # issue 14's design (baselines, gate, L/U)
    python benchmarks/repro/report.py --scale cpu       # issue 8's rows

cpu64 rewrites the part between `<!-- issue14:begin -->` / `<!-- issue14:end -->`; other scales
the part between `<!-- tables:begin -->` / `<!-- tables:end -->`.

Rewrites the part of docs/results.md between the `<!-- tables:begin -->` / `<!-- tables:end -->`
markers (every number there comes from a logged row) and draws docs/img/repro_*.png: training
curves from each run's metrics.jsonl and bar plots of the mean over seeds with the std as error bar.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from results_io import read_rows  # noqa: E402

BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"
LABELS = {"mocov2_teacher": "teacher: resnet18 MoCo v2", "supervised_teacher": "teacher: resnet18 supervised",
          "mocov2": "resnet10t MoCo v2 alone (head 512)", "disco_h512": "resnet10t DisCo, head 512",
          "disco_h2048": "resnet10t DisCo, head 2048", "ssld_symkl": "resnet10t SSLD (sym. KL, no labels)",
          "labels_only": "resnet10t labels only (CE)"}
ORDER = list(LABELS)


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.2f} (1 seed)"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f} (n={len(xs)})"


def latest(rows: list[dict]) -> dict[tuple, dict]:
    """One row per (arm, seed): the last logged (re-runs append)."""
    out = {}
    for r in rows:
        out[(r["arm"], r["seed"])] = r
    return out


def table(rows: dict, arms: list[str], cols: list[tuple[str, str]]) -> list[str]:
    head = "| arm | " + " | ".join(c for c, _ in cols) + " | train wall s / run | train img/s | seeds |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for arm in arms:
        rs = [r for (a, _), r in sorted(rows.items()) if a == arm]
        if not rs:
            lines.append(f"| {LABELS[arm]} | " + " | ".join("not run" for _ in cols) + " | | | 0 |")
            continue
        vals = [mean_std([r["metrics"].get(k) for r in rs]) for _, k in cols]
        wall = statistics.mean(r["train_wall_s"] for r in rs)
        ips = statistics.mean(r["images_per_s"] for r in rs if r["images_per_s"])
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {LABELS[arm]} | " + " | ".join(vals) + f" | {wall:.0f} | {ips:.0f} | {seeds} |")
    return lines


def commands(rows: dict) -> list[str]:
    out = ["```"]
    seen = set()
    for arm in ORDER:
        for (a, s), r in sorted(rows.items()):
            if a != arm:
                continue
            for c in r["command"]["prepare"]:
                if c not in seen:
                    seen.add(c)
                    out.insert(1, c)
            out.append(f"# {arm}, seed {s}")
            out.append(r["command"]["train"])
            out += list(r["command"]["eval"].values())
    return out + ["```"]


def curves(rows: dict, img: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for name, arms, key in (("disco", ["mocov2_teacher", "mocov2", "disco_h512", "disco_h2048"], "infonce"),
                            ("ssld", ["supervised_teacher", "ssld_symkl", "labels_only"], "loss")):
        fig, axes = plt.subplots(1, 2 if name == "disco" else 1, figsize=(11 if name == "disco" else 6.5, 4),
                                 squeeze=False)
        ax, ax2 = axes[0][0], (axes[0][1] if name == "disco" else None)
        for i, arm in enumerate(arms):
            for (a, s), r in sorted(rows.items()):
                if a != arm:
                    continue
                mp = Path(r["run_dir"]) / "metrics.jsonl"
                if not mp.exists():
                    continue
                m = [json.loads(x) for x in mp.read_text().splitlines() if x.strip()]
                bs = r["steps"] and (r["epochs_seen"] * r["train_images"] / r["steps"])
                ax.plot([x["step"] * bs / r["train_images"] for x in m], [x.get(key, x["loss"]) for x in m],
                        color=f"C{i}", alpha=0.8, label=f"{arm}" if s == min(ss for (aa, ss) in rows if aa == arm) else None)
                if ax2 is not None and "distill_v0" in m[0]:  # DisCo: per-view 2 - 2cos(student, teacher)
                    ax2.plot([x["step"] * bs / r["train_images"] for x in m],
                             [x["distill_v0"] + x["distill_v1"] for x in m], color=f"C{i}", alpha=0.8,
                             label=f"{arm}" if s == min(ss for (aa, ss) in rows if aa == arm) else None)
        ax.set_xlabel("epochs (passes over the train subset)")
        ax.set_ylabel("InfoNCE term" if key == "infonce" else "training loss (CE / sym. KL)")
        ax.set_title(f"{name}: training curves, every seed (reduced-scale CPU run)")
        ax.legend(fontsize=8)
        if ax2 is not None:
            ax2.set_yscale("log")
            ax2.set_xlabel("epochs (passes over the train subset)")
            ax2.set_ylabel("distillation terms, sum of both views (2 - 2cos)")
            ax2.set_title("DisCo: student-teacher embedding distance", fontsize=10)
            ax2.legend(fontsize=8)
        fig.tight_layout()
        out = img / f"repro_{name}_curves.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        made.append(out.name)
    # bar plot: headline metric per arm
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (arms, key, title) in zip(axes, ((["mocov2_teacher", "mocov2", "disco_h512", "disco_h2048"], "knn_top1",
                                              "kNN top-1 on the test subset"),
                                             (["supervised_teacher", "ssld_symkl", "labels_only"], "top1",
                                              "classifier top-1 on the test subset"))):
        ms, ss, names = [], [], []
        for arm in arms:
            xs = [r["metrics"].get(key) for (a, _), r in rows.items() if a == arm]
            xs = [x for x in xs if x is not None]
            if xs:
                names.append(arm)
                ms.append(statistics.mean(xs))
                ss.append(statistics.stdev(xs) if len(xs) > 1 else 0.0)
        ax.bar(names, ms, yerr=ss, capsize=4, color=[f"C{i}" for i in range(len(names))])
        lo = min(ms) - 10 if ms else 0
        ax.set_ylim(max(0, lo), 100)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle("mean ± std over seeds (reduced-scale CPU run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(img / "repro_bars.png", dpi=110)
    plt.close(fig)
    return made + ["repro_bars.png"]


# --------------------------------------------------------------------------- issue 14 design
BEGIN14, END14 = "<!-- issue14:begin -->", "<!-- issue14:end -->"
LABELS14 = {
    "raw_pixels": "raw pixels (flattened, normalised)", "random_init": "resnet10t random init, BN recalibrated",
    "mocov2_teacher": "teacher: resnet18 MoCo v2 (self-supervised)",
    "supervised_teacher": "teacher: resnet18 trained with labels (control)",
    "mocov2": "resnet10t MoCo v2 alone (head 512)", "disco_h512": "resnet10t DisCo <- MoCo teacher, head 512",
    "disco_h2048": "resnet10t DisCo <- MoCo teacher, head 2048",
    "disco_sup": "resnet10t DisCo <- supervised teacher (pooled 512-d), head 2048",
    "raw_pixels_L": "raw pixels, probe on L's labels", "random_init_L": "resnet10t random init, probe on L",
    "supervised_teacher_L": "teacher: resnet18 trained with labels on L",
    "labels_only_L": "resnet10t, cross-entropy on L", "ssld_L": "resnet10t SSLD on L (no labels)",
    "ssld_LU": "resnet10t SSLD on L + U (no labels)",
    "ssld_Lmine": "resnet10t SSLD on L + mined part of U (no labels)"}
GATE_MARGIN, GATE_COS = 5.0, 0.9


def _vals(rows: dict, arm: str, key: str) -> list[float]:
    return [r["metrics"].get(key) for (a, _), r in sorted(rows.items()) if a == arm
            and r["metrics"].get(key) is not None]


def _mean(rows, arm, key):
    v = _vals(rows, arm, key)
    return statistics.mean(v) if v else None


def _fmt(v, nd=2):
    return "n/a" if v is None else f"{v:.{nd}f}"


def table14(rows: dict, arms: list[str], cols: list[tuple[str, str]]) -> list[str]:
    lines = ["| arm | " + " | ".join(c for c, _ in cols) + " | train wall s / run | seeds |",
             "|" + "---|" * (len(cols) + 3)]
    for arm in arms:
        rs = [r for (a, _), r in sorted(rows.items()) if a == arm]
        if not rs:
            lines.append(f"| {LABELS14[arm]} | " + " | ".join("not run" for _ in cols) + " | | 0 |")
            continue
        vals = [mean_std(_vals(rows, arm, k)) if not k.endswith("cosine") else _fmt(_mean(rows, arm, k), 3)
                for _, k in cols]
        wall = statistics.mean(r["train_wall_s"] for r in rs)
        lines.append(f"| {LABELS14[arm]} | " + " | ".join(vals) + f" | {wall:.0f} | "
                     + ",".join(str(r["seed"]) for r in rs) + " |")
    return lines


def gate(rows: dict, teacher: str, alone: str, raw: str) -> dict:
    t, a, p = _mean(rows, teacher, "knn_top1"), _mean(rows, alone, "knn_top1"), _mean(rows, raw, "knn_top1")
    cos = _mean(rows, teacher, "final_embedding_mean_cosine")
    ok = None if None in (t, a, p, cos) else (t - a >= GATE_MARGIN and t - p >= GATE_MARGIN and cos < GATE_COS)
    return {"teacher": teacher, "knn": t, "vs_alone": None if None in (t, a) else t - a,
            "vs_raw": None if None in (t, p) else t - p, "cos": cos,
            "pooled_cos": _mean(rows, teacher, "val_mean_cosine"), "passes": ok}


def claim(rows: dict, arm: str, base: str, keys: list[str], what: str, gate_ok: bool | None = True) -> str:
    """One sentence, from the rows: the mean gain of `arm` over `base` per metric and a verdict
    (reproduced = higher on every metric by more than the larger seed std of the two arms)."""
    parts, ok = [], True
    for k in keys:
        x, y = _vals(rows, arm, k), _vals(rows, base, k)
        if not x or not y:
            return f"- {what}: not run yet ({arm} vs {base})."
        d = statistics.mean(x) - statistics.mean(y)
        sd = max(statistics.stdev(x) if len(x) > 1 else 0.0, statistics.stdev(y) if len(y) > 1 else 0.0)
        parts.append(f"{k} {d:+.2f} (seed std up to {sd:.2f}, n={min(len(x), len(y))})")
        ok = ok and d > sd and d > 0
    n = min(min(len(_vals(rows, arm, k)), len(_vals(rows, base, k))) for k in keys)
    if gate_ok is False:
        verdict = "not testable here: its teacher fails the gate"
    elif n < 2:
        verdict = f"{'higher' if ok else 'not higher'} on one seed (no verdict before 3 seeds)"
    else:
        verdict = "reproduced at this scale" if ok else "not reproduced at this scale"
    return f"- {what}: {verdict}; {LABELS14[arm]} minus {LABELS14[base]}: " + ", ".join(parts) + "."


def section14(rows: dict, scale: str) -> list[str]:
    any_row = next(iter(rows.values()))
    ssl = [r for r in rows.values() if r["experiment"] == "disco"]
    cls = [r for r in rows.values() if r["experiment"] == "ssld"]
    lines = [BEGIN14, "", f"*Scale {scale}: Fashion-MNIST, first {any_row['train_images'] if ssl else '?'} train "
             f"images (L = first {next((r['train_images'] for r in cls if r['arm'] in ('ssld_L', 'supervised_teacher_L')), '?')}), "
             f"all {any_row['test_images']} test images; DisCo experiment at "
             f"{next((r['resolution'] for r in ssl), '?')} px, SSLD at {next((r['resolution'] for r in cls), '?')} px. "
             "Top-1 in %, mean ± sample std over the seeds listed; every number from a logged row.*", "",
             "### DisCo: baselines, teachers, students (kNN bank = the train subset, full test split)", ""]
    lines += table14(rows, ["raw_pixels", "random_init", "mocov2_teacher", "supervised_teacher", "mocov2",
                            "disco_h512", "disco_h2048", "disco_sup"],
                     [("kNN k=20", "knn_top1_k20"), ("kNN k=200", "knn_top1_k200"), ("linear (fast)", "linear_top1"),
                      ("mean cos, pooled", "val_mean_cosine")])
    lines += ["", f"### The gate (a teacher counts if its kNN k=200 beats the student alone and raw pixels by >= "
              f"{GATE_MARGIN:.0f} points and its final embedding's mean cosine between different test images is "
              f"< {GATE_COS})", "", "| teacher | kNN k=200 | minus student alone | minus raw pixels | "
              "mean cos, final embedding | mean cos, pooled | passes |", "|---|---|---|---|---|---|---|"]
    gates = {}
    for t in ("mocov2_teacher", "supervised_teacher"):
        g = gates[t] = gate(rows, t, "mocov2", "raw_pixels")
        lines.append(f"| {LABELS14[t]} | {_fmt(g['knn'])} | {_fmt(g['vs_alone'])} | {_fmt(g['vs_raw'])} | "
                     f"{_fmt(g['cos'], 3)} | {_fmt(g['pooled_cos'], 3)} | "
                     f"{'n/a' if g['passes'] is None else ('yes' if g['passes'] else 'no')} |")
    lines += ["", "### SSLD with unlabeled data (the student's own classifier on the full test split; baselines: "
              "linear probe trained on L's labels)", ""]
    lines += table14(rows, ["raw_pixels_L", "random_init_L", "supervised_teacher_L", "labels_only_L", "ssld_L",
                            "ssld_LU", "ssld_Lmine"], [("top-1", "linear_top1"), ("agreement with teacher", "agreement_top1")])
    knl = ["knn_top1", "linear_top1"]
    mg = gates["mocov2_teacher"]["passes"]
    lines += ["", "### Claims, one sentence each (generated from the rows)", "",
              claim(rows, "disco_h2048", "mocov2", knl, "DisCo (head 2048) beats MoCo v2 alone", mg),
              claim(rows, "disco_h512", "mocov2", knl, "DisCo (head 512) beats MoCo v2 alone", mg),
              claim(rows, "disco_h2048", "disco_h512", knl, "the wide head (2048) beats the narrow one (512)", mg),
              claim(rows, "disco_sup", "mocov2", knl, "positive control: DisCo from a supervised teacher beats "
                    "MoCo v2 alone", gates["supervised_teacher"]["passes"]),
              claim(rows, "ssld_L", "labels_only_L", ["linear_top1"], "SSLD on L without labels matches or beats "
                    "cross-entropy on L's labels"),
              claim(rows, "ssld_LU", "ssld_L", ["linear_top1"], "adding unlabeled images U helps SSLD"),
              claim(rows, "ssld_LU", "labels_only_L", ["linear_top1"], "SSLD on L + U beats the labels-only student"),
              claim(rows, "ssld_Lmine", "ssld_L", ["linear_top1"], "adding the images `fastdisco mine` selects "
                    "from U helps SSLD"),
              claim(rows, "ssld_Lmine", "ssld_LU", ["linear_top1"], "L + the mined part of U beats L + all "
                    "of U"),
              "", "Per-run rows: `benchmarks/results/repro_fmnist.jsonl` (scale " + scale + "). Sweep: "
              f"`nice python benchmarks/repro/run_fmnist.py --scale {scale} --seeds 0 1 2` (resumable), then "
              f"`python benchmarks/repro/report.py --scale {scale}`. Each row's own commands:", ""]
    lines += ["```"] + [c for (a, s_), r in sorted(rows.items(), key=lambda kv: (ORDER14.index(kv[0][0])
                                                                                 if kv[0][0] in ORDER14 else 99, kv[0][1]))
                        for c in ([f"# {a}, seed {s_}"] + ([r["command"]["train"]] if r["command"]["train"] else [])
                                  + list(r["command"]["eval"].values()))] + ["```", "", END14]
    return lines


ORDER14 = list(LABELS14)


def write_section(doc: Path, lines: list[str], begin: str, end: str) -> None:
    text = doc.read_text() if doc.exists() else "# Results\n"
    if begin not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    a, b = text.index(begin), text.index(end) + len(end)
    doc.write_text(text[:a] + "\n".join(lines) + text[b:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="cpu")
    p.add_argument("--name", default="repro_fmnist")
    p.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    p.add_argument("--img-dir", default=str(ROOT / "docs" / "img"))
    args = p.parse_args(argv)
    rows = latest([r for r in read_rows(args.name, args.results_dir) if r.get("scale") == args.scale])
    if not rows:
        raise SystemExit(f"no rows for scale {args.scale} in benchmarks/results/{args.name}.jsonl")
    if any("role" in r for r in rows.values()):  # issue 14's design
        write_section(Path(args.doc), section14(rows, args.scale), BEGIN14, END14)
        print(f"wrote {args.doc} (section {BEGIN14})")
        return 0
    any_row = next(iter(rows.values()))
    img = Path(args.img_dir)
    img.mkdir(parents=True, exist_ok=True)
    pngs = curves(rows, img)
    ep = {("teachers" if r["experiment"] == "teacher" else "students"): r["epochs_seen"] for r in rows.values()}
    bs = {round(r["epochs_seen"] * r["train_images"] / r["steps"]) for r in rows.values() if r["steps"]}
    scale = (f"*Reduced-scale CPU run ({args.scale}): Fashion-MNIST, {any_row['train_images']} train / "
             f"{any_row['test_images']} test images, {any_row['resolution']} px, "
             + ", ".join(f"{k} {v:.1f} epochs" for k, v in sorted(ep.items()))
             + f", batch {'/'.join(map(str, sorted(bs)))}, 2 shared CPU cores. Top-1 in %, mean ± sample std "
             "over the seeds listed.*")
    lines = [BEGIN, "", scale, "", "### Teachers and DisCo students (weighted kNN and fast linear probe on the test subset)",
             ""]
    lines += table(rows, ["mocov2_teacher", "mocov2", "disco_h512", "disco_h2048"],
                   [("kNN top-1", "knn_top1"), ("linear top-1", "linear_top1")])
    lines += ["", "### SSLD (the student's own classifier on the test subset)", ""]
    lines += table(rows, ["supervised_teacher", "ssld_symkl", "labels_only"],
                   [("top-1", "top1"), ("agreement with teacher top-1", "agreement_top1")])
    lines += ["", "Per-run rows (with provenance) are in `benchmarks/results/repro_fmnist.jsonl`.", "",
              "### The commands behind every row", ""]
    lines += [f"The whole sweep: `nice python benchmarks/repro/run_fmnist.py --scale {args.scale} --seeds 0 1 2` "
              f"(resumable), then `python benchmarks/repro/report.py --scale {args.scale}` for these tables. "
              "Each row's own commands:", ""]
    lines += commands(rows)
    lines += ["", *[f"![{p}](img/{p})" for p in pngs], "", END]
    doc = Path(args.doc)
    text = doc.read_text() if doc.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    a, b = text.index(BEGIN), text.index(END) + len(END)
    doc.write_text(text[:a] + "\n".join(lines) + text[b:])
    print(f"wrote {doc} and {', '.join(pngs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
