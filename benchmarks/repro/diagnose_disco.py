"""Issue 14, item 4: why does (or doesn't) a DisCo student beat MoCo v2 alone? Three measurements
on finished runs of benchmarks/repro/run_fmnist.py, written to
benchmarks/results/repro_disco_diagnosis.jsonl (one row per DisCo run):

1. the loss terms over training, from the run's metrics.jsonl: InfoNCE, the distillation terms
   (2 - 2cos per view, batch mean) and their weighted sum as trained (x32 for `sum`), and the
   distillation share of the total loss;
2. each term's gradient on the student at initialisation (same seed = same weights as the MoCo
   arm) and at the final checkpoint: L2 norms of d(InfoNCE)/dtheta and d(w * distill)/dtheta over
   all student parameters, the share ||g_distill|| / (||g_nce|| + ||g_distill||), and the cosine
   between the two gradients, averaged over a few training batches;
3. the student's final embedding against the teacher's on the test images (BN in eval mode):
   mean cos(student_i, teacher_i), and the mean cosine between different images of each.

    nice python benchmarks/repro/diagnose_disco.py --scale cpu64 --arms disco_h2048 disco_h512 disco_sup --seed 0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(ROOT))
from results_io import append_rows  # noqa: E402


def loss_terms(run: Path, scale: float) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    out = []
    for r in rows:
        d = r["distill_v0"] + r["distill_v1"]
        out.append({"step": r["step"], "infonce": r["infonce"], "distill_sum_views": d, "weighted_distill": scale * d,
                    "distill_share_of_loss": scale * d / (r["infonce"] + scale * d)})
    pick = sorted({0, len(out) // 4, len(out) // 2, 3 * len(out) // 4, len(out) - 1})
    return {"curve": [out[i] for i in pick]}


def grad_share(cfg, state: dict | None, loader, batches: int) -> dict:
    import torch

    from fastdisco.methods import METHODS
    from fastdisco.train import build_models

    student, teacher, method = build_models(cfg, METHODS["disco"])
    if state is not None:
        student.load_state_dict(state["student"])
        method.load_extra_state(state)
    method.train()
    params = [p for p in student.parameters() if p.requires_grad]
    scale = method.distill_scale()
    from fastdisco.kernels import embedding_distill_loss

    acc = {"nce_norm": 0.0, "distill_norm": 0.0, "cos": 0.0}
    for b, batch in enumerate(loader):
        if b >= batches:
            break
        x0, x1 = batch.views[0], batch.views[1]
        s0, s1 = student(x0), student(x1)
        t0, t1 = method.teach(x0), method.teach(x1)
        nce = method.contrastive(s0, x1)
        dist = scale * (embedding_distill_loss(s0, t0, reduction="mean") + embedding_distill_loss(s1, t1, reduction="mean"))
        g1 = torch.autograd.grad(nce, params, retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(dist, params, allow_unused=True)
        v1 = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(g1, params)])
        v2 = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(g2, params)])
        acc["nce_norm"] += float(v1.norm()) / batches
        acc["distill_norm"] += float(v2.norm()) / batches
        acc["cos"] += float(torch.nn.functional.cosine_similarity(v1, v2, dim=0)) / batches
    acc["distill_share"] = acc["distill_norm"] / (acc["nce_norm"] + acc["distill_norm"])
    return acc


def embeddings(cfg, state: dict, test: Path, res: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fastdisco.config import DataConfig
    from fastdisco.data.loader import make_loader
    from fastdisco.evaluation.baselines import mean_pairwise_cosine
    from fastdisco.methods import METHODS
    from fastdisco.train import build_models

    cfg.model.teacher_bn = "eval"
    student, teacher, _ = build_models(cfg, METHODS["disco"])
    student.load_state_dict(state["student"])
    student.eval()
    loader = make_loader(DataConfig(path=str(test), backend="ffcv", recipe="eval", resolution=res, batch_size=256,
                                    num_workers=1, drop_last=False), device=torch.device("cpu"))
    ss, ts = [], []
    with torch.no_grad():
        for batch in loader:
            x = batch.views[0]
            keep = batch.valid if getattr(batch, "valid", None) is not None else slice(None)
            ss.append(F.normalize(student(x)[keep].float(), dim=1))
            ts.append(F.normalize(teacher(x)[keep].float(), dim=1))
    s, t = torch.cat(ss), torch.cat(ts)
    return {"student_teacher_cos": float((s * t).sum(1).mean()), "student_mean_cosine": mean_pairwise_cosine(s),
            "teacher_mean_cosine": mean_pairwise_cosine(t), "test_images": int(s.shape[0])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="cpu64")
    p.add_argument("--runs", default="runs/repro")
    p.add_argument("--arms", nargs="+", default=["disco_h2048", "disco_h512", "disco_sup"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", default="data/repro/fmnist_test10000")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--name", default="repro_disco_diagnosis")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from fastdisco.checkpoint_formats import read_checkpoint
    from fastdisco.config import from_dict
    from fastdisco.data.loader import make_loader

    for arm in args.arms:
        run = Path(args.runs) / args.scale / arm / f"seed{args.seed}"
        if not (run / "checkpoints" / "last.pt").exists():
            print(f"skip {arm}: no finished run at {run}")
            continue
        import yaml

        cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        cfg.train.device = "cpu"
        state = read_checkpoint(run / "checkpoints" / "last.pt")
        scale = 32.0 * cfg.method.distill_weight if cfg.method.distill_reduction == "sum" else cfg.method.distill_weight
        loader = make_loader(cfg.data, device=torch.device("cpu"))
        row = {"experiment": "disco", "arm": arm, "seed": args.seed, "scale": args.scale, "run_dir": str(run),
               "distill_weight_as_trained": scale, "loss_terms": loss_terms(run, scale),
               "grad_at_init": grad_share(cfg, None, loader, args.batches),
               "grad_at_end": grad_share(cfg, state, loader, args.batches),
               "embedding_vs_teacher": embeddings(cfg, state, Path(args.test), cfg.data.resolution)}
        append_rows(args.name, [row])
        print(json.dumps({k: v for k, v in row.items() if k != "loss_terms"}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
