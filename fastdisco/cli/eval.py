"""`fastdisco eval PROTOCOL CKPT --train DATA --val DATA`: linear | knn | semi | ssld.

Results (top-1 / top-5 in percent, settings, provenance and the exact command) are written
atomically as JSON into the run directory: RUN/eval/<protocol>.json (linear fast mode:
linear_fast.json). Evaluating a teacher checkpoint the same way (`--format teacher` or a plain
timm state dict with `--model`) gives the reference row.

torch and the loaders are imported inside main() so `fastdisco --help` stays light.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from fastdisco.errors import FastdiscoError, UsageError



def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="fastdisco checkpoint or run dir, exported .safetensors, timm state dict, or teacher ckpt")
    p.add_argument("--train", metavar="DATA", help="prepared labelled train set (fastdisco prepare-data output)")
    p.add_argument("--val", metavar="DATA", help="prepared labelled validation set")
    p.add_argument("--holdout", type=float, default=0.0, metavar="F",
                   help="no --val: hold out a seeded class-balanced fraction F of --train as val (knn, semi, linear --fast)")
    p.add_argument("--out", metavar="FILE.json", help="result file (default RUN/eval/<protocol>.json)")
    g = p.add_argument_group("model")
    g.add_argument("--format", default="auto",
                   choices=("auto", "fastdisco", "safetensors", "timm", "teacher", "raw_pixels", "random_init"),
                   help="what CKPT is (auto: by suffix / checkpoint format). Baselines: raw_pixels (flattened "
                        "eval-transformed images) and random_init (--model NAME, seeded by --seed, BN statistics "
                        "recalibrated on --train); CKPT is then the directory whose eval/ gets the result")
    g.add_argument("--stem", default="default", choices=("default", "small"), help="random_init: model.stem")
    g.add_argument("--model", help="timm name (plain state dicts, teachers, exports without sidecar)")
    g.add_argument("--teacher-format", default="auto", help="--format teacher: fastdisco.models.teacher format")
    g = p.add_argument_group("data and device")
    g.add_argument("--backend", default="torch", choices=("torch", "dali", "ffcv"))
    g.add_argument("--decode-device", default="auto", choices=("auto", "mixed", "cpu"))
    g.add_argument("--batch-size", type=int, default=256, help="images per batch (the protocol's 256)")
    g.add_argument("--num-workers", type=int, default=4)
    g.add_argument("--resolution", type=int, default=None,
                   help="eval crop side (default: the run's data.resolution for a fastdisco run, the sidecar's "
                        "input size for an export, else 224)")
    g.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    g.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="backbone autocast dtype (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true")


def _probe(p: argparse.ArgumentParser, full: bool) -> None:
    """The linear probe's options (linear; semi trains the same fast probe per subset)."""
    g = p.add_argument_group("linear probe")
    if full:
        m = g.add_mutually_exclusive_group()
        m.add_argument("--fast", dest="full", action="store_false", default=False,
                       help="(default) train on cached features: seconds, close to the protocol's number")
        m.add_argument("--full", dest="full", action="store_true",
                       help="the DisCo protocol: RRC+flip every epoch through the frozen backbone")
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--lr", type=float, default=None, help="default: 3.0 (--full), 1e-3 (fast adamw)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--wd", type=float, default=0.0)
    if full:
        g.add_argument("--milestones", type=int, nargs="*", default=[5, 10, 15, 20, 25, 30, 35, 40, 45, 60, 80])
        g.add_argument("--gamma", type=float, default=0.5)
    g.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd", "lbfgs"), help="fast mode optimiser")
    g.add_argument("--probe-batch-size", type=int, default=1024, help="fast mode mini-batch")
    g.add_argument("--no-standardize", action="store_true", help="fast mode: do not standardise features")
    g.add_argument("--aug-passes", type=int, default=0,
                   help="fast mode: add N passes of the train set with the `linear` recipe (RRC + flip)")


def _semi(p: argparse.ArgumentParser) -> None:
    _probe(p, full=False)
    g = p.add_argument_group("semi-supervised protocol")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--fast", dest="full", action="store_false", default=False,
                   help="(default) the cached-feature probe on each subset")
    m.add_argument("--full", dest="full", action="store_true",
                   help="DisCo's main_lincls_semi.py: a linear layer on the frozen backbone, RRC+flip every "
                        "epoch, SGD lr 3.0 x0.5 at --milestones, on each --subset's images")
    g.add_argument("--milestones", type=int, nargs="*", default=[60, 80], help="--full: epochs where lr x --gamma")
    g.add_argument("--gamma", type=float, default=0.5)
    g = p.add_argument_group("semi-supervised subsets")
    g.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1],
                   help="fast mode: seeded class-balanced label fractions")
    g.add_argument("--subset", "--subset-file", dest="subset_file", action="append", default=[], metavar="FILE",
                   help="label subset: SimCLR's 1percent.txt / 10percent.txt (one image file name per line) or "
                        "sample indices / keys (repeatable; replaces --fractions; required with --full)")
    g.add_argument("--subset-source", metavar="SRC",
                   help="where --subset file names are looked up: the SRC prepare-data read for --train "
                        "(default: the path its manifest records)")


def _knn(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("knn")
    g.add_argument("--k", type=int, nargs="+", default=[200],
                   help="neighbours; several values share one feature pass (top1/top5 are the first k's, "
                        "by_k holds all)")
    g.add_argument("--temperature", type=float, default=0.07)


def _ssld(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ssld")
    g.add_argument("--teacher", help="teacher timm name (default: the run's model.teacher)")
    g.add_argument("--teacher-ckpt", help="teacher checkpoint (default: the run's model.teacher_ckpt)")


# protocol -> (its own options, one-line help)
SUBCOMMANDS = {
    "linear": (lambda p: _probe(p, full=True), "linear probe on the frozen backbone (fast, or the DisCo protocol)"),
    "knn": (_knn, "weighted kNN on the frozen backbone's features"),
    "semi": (_semi, "semi-supervised: linear probes on 1 and 10 percent label subsets"),
    "ssld": (_ssld, "SSLD student: its own classifier's top-1 and agreement with the teacher"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`eval PROTOCOL ...` as nested subcommands: `fastdisco eval knn --help` shows knn's options.
    Every protocol's args also carry the other protocols' defaults, so main() reads one namespace."""
    everything = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    _common(everything)
    for adder, _ in SUBCOMMANDS.values():
        adder(everything)
    defaults = {a.dest: a.default for a in everything._actions if a.dest != "ckpt"}
    sub = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for name, (adder, help_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        _common(sp)
        adder(sp)
        own = {a.dest for a in sp._actions}
        sp.set_defaults(**{k: v for k, v in defaults.items() if k not in own})


# --------------------------------------------------------------------------- data
def read_manifest(path: str | None, what: str, need_labels: bool) -> dict:
    """The prepared dataset's manifest, with one-line errors for the usual mistakes."""
    if not path:
        raise UsageError(f"--{what} DATA is required for this protocol")
    man = Path(path) / "manifest.json"
    if not man.is_file():
        raise FastdiscoError(f"{what} data {path} is not a prepared dataset (no manifest.json; run fastdisco prepare-data)")
    try:
        m = json.loads(man.read_text())
    except json.JSONDecodeError:
        raise FastdiscoError(f"{man} is not valid JSON") from None
    if need_labels and not m.get("labeled", False):
        raise FastdiscoError(f"{what} data {path} is unlabeled (manifest labeled=false): this protocol needs labels")
    return m


def build_loader(path: str, recipe: str, args, device, dtype):
    try:
        from fastdisco.loader import make_loader
    except ImportError as e:
        raise FastdiscoError(f"the data loader (fastdisco.loader) is not available: {e}") from None
    from fastdisco.config import DataConfig

    cfg = DataConfig(path=path, backend=args.backend, decode_device=args.decode_device, recipe=recipe,
                     resolution=args.resolution, batch_size=args.batch_size, num_workers=args.num_workers,
                     drop_last=False, seed=args.seed)
    return make_loader(cfg, device=device, dtype=dtype, rank=0, world_size=1)


def pick_device(args):
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise FastdiscoError("--device cuda but no CUDA device is available")
    dev = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    prec = args.precision if args.precision != "auto" else ("bf16" if dev.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[prec]
    return dev, dtype


def _labelled(feats, labels, idx, what: str):
    keep = labels >= 0
    if not bool(keep.any()):
        raise FastdiscoError(f"{what} data has no labelled samples")
    return feats[keep], labels[keep], idx[keep]


# --------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> int:
    t0 = time.time()
    if args.resolution is not None and args.resolution < 1:
        raise UsageError(f"--resolution must be at least 1, got {args.resolution}")
    if args.protocol != "ssld" and not args.val and not args.holdout:
        read_manifest(args.train, "train", True)  # the clearer error first
        raise UsageError("give --val DATA, or --holdout F to hold out part of --train")
    if args.holdout and not 0 < args.holdout < 1:
        raise UsageError(f"--holdout must be in (0, 1), got {args.holdout}")
    if args.holdout and args.protocol in ("linear", "semi") and args.full:
        raise UsageError("--holdout works with cached features only; --full needs --val")
    if args.protocol == "semi" and args.full and not args.subset_file:
        raise UsageError("eval semi --full trains on published label subsets: give --subset FILE (e.g. SimCLR's "
                         "1percent.txt / 10percent.txt)")
    manifests = {}
    if args.protocol == "ssld":
        manifests["val"] = read_manifest(args.val or args.train, "val" if args.val else "train", False)
    else:
        manifests["train"] = read_manifest(args.train, "train", True)
        if args.val:
            manifests["val"] = read_manifest(args.val, "val", True)
            from fastdisco.evaluation.classes import val_to_train_labels

            # val labels as train's indices (matched by class name); None: the lists are identical
            args._val_labels = val_to_train_labels(manifests["train"].get("classes") or [],
                                                   manifests["val"].get("classes") or [], args.train, args.val)
            if args._val_labels is not None and args.protocol == "linear" and args.full:
                raise FastdiscoError(f"linear --full needs --train {args.train} and --val {args.val} with identical "
                                     "class lists (the cached-feature protocols map val classes by name)")

    import torch

    from fastdisco.evaluation.backbone import load_backbone

    device, dtype = pick_device(args)
    lb = load_backbone(args.ckpt, model=args.model, fmt=args.format, teacher_format=args.teacher_format,
                       seed=args.seed, stem=getattr(args, "stem", "default"))
    if args.resolution is None:
        args.resolution = default_resolution(lb)
    lb.module.to(device)
    if lb.kind == "random_init":
        if not args.train:
            raise FastdiscoError("--format random_init needs --train DATA (its BN statistics are recalibrated on it)")
        from fastdisco.evaluation.baselines import recalibrate_bn

        lb.meta["bn_recalibrated_on"] = recalibrate_bn(
            lb.module, build_loader(args.train, "eval", args, device, dtype), device=device, amp_dtype=dtype)
    if device.type == "cuda":
        lb.module.to(memory_format=torch.channels_last)
    progress = not args.no_progress
    run = {"ssld": _ssld, "linear": _linear, "knn": _cached, "semi": _semi_full if args.full else _cached}
    result = run[args.protocol](args, lb, device, dtype, progress)
    out = Path(args.out) if args.out else default_out(lb, args)
    record = {
        "protocol": protocol_name(args),
        **result,
        "model": {"name": lb.name, "kind": lb.kind, "source": lb.source, "num_classes": lb.num_classes,
                  **{k: v for k, v in lb.meta.items() if k not in ("config", "provenance")}},
        "data": {"train": args.train, "val": args.val, "holdout": args.holdout or None, "backend": args.backend,
                 "resolution": args.resolution, "batch_size": args.batch_size,
                 "val_classes_mapped_by_name": getattr(args, "_val_labels", None) is not None},
        "seconds": round(time.time() - t0, 2),
        "command": shlex.join(sys.argv),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
    }
    from fastdisco import provenance
    from fastdisco.io import write_json

    record["provenance"] = provenance.collect()
    write_json(out, record)
    print(summary_line(record) + f"  -> {out}")
    return 0


def default_resolution(lb) -> int:
    """The resolution the network was trained at: a fastdisco run's data.resolution, an exported
    backbone's sidecar input_size; 224 for anything else (plain timm weights, teachers, baselines)."""
    res = None
    if lb.kind == "fastdisco":
        res = lb.meta.get("resolution")
    elif lb.kind == "safetensors":
        size = lb.meta.get("input_size")
        res = size[-1] if isinstance(size, (list, tuple)) and size else None
    try:
        return int(res) if res and int(res) >= 1 else 224
    except (TypeError, ValueError):
        return 224


def protocol_name(args) -> str:
    """linear (the DisCo protocol) / linear_fast; semi (the fast probe, as before) / semi_full."""
    if args.protocol == "linear":
        return "linear" if args.full else "linear_fast"
    if args.protocol == "semi":
        return "semi_full" if args.full else "semi"
    return args.protocol


def default_out(lb, args) -> Path:
    name = protocol_name(args)
    if lb.run_dir:
        return Path(lb.run_dir) / "eval" / f"{name}.json"
    src = Path(lb.source)
    return src.parent / "eval" / f"{src.stem}_{name}.json"


def summary_line(r: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{v:.2f}"

    if r["protocol"] in ("semi", "semi_full"):
        parts = [f"{k}: top1 {pct(v['top1'])}" for k, v in r["subsets"].items()]
        return f"{r['protocol']}  {r['model']['name']}  " + "  ".join(parts)
    if r["protocol"] == "ssld":
        return (f"ssld  {r['model']['name']}  top1 {pct(r['top1'])}  top5 {pct(r['top5'])}  "
                f"agreement {pct(r['agreement_top1'])}")
    return f"{r['protocol']}  {r['model']['name']}  top1 {pct(r['top1'])}  top5 {pct(r['top5'])}"


# --------------------------------------------------------------------------- protocols
def _features(args, lb, path: str, recipe: str, device, dtype, progress, desc: str):
    from fastdisco.evaluation.features import extract_features

    loader = build_loader(path, recipe, args, device, dtype)
    return extract_features(lb.module, loader, device=device, amp_dtype=dtype, progress=progress,
                            desc=desc, return_indices=True)


def _train_val_features(args, lb, device, dtype, progress):
    """Cached features: train (eval transform, + `--aug-passes` RRC+flip passes) and val
    (eval transform, or a held-out part of train). Unlabelled rows are dropped."""
    import torch

    from fastdisco.evaluation.semi import balanced_subset

    tr = _labelled(*_features(args, lb, args.train, "eval", device, dtype, progress, "train features"), "train")
    if args.val:
        va = _labelled(*_features(args, lb, args.val, "eval", device, dtype, progress, "val features"), "val")
        if getattr(args, "_val_labels", None) is not None:  # val's class indices -> train's, by name
            va = (va[0], torch.tensor(args._val_labels, device=va[1].device)[va[1]], va[2])
    else:
        pos = balanced_subset(tr[1], args.holdout, seed=args.seed).to(tr[0].device)
        mask = torch.ones(tr[1].numel(), dtype=torch.bool, device=tr[0].device)
        mask[pos] = False
        va = tuple(t[pos] for t in tr)
        tr = tuple(t[mask] for t in tr)
    if args.aug_passes:
        held = set(va[2].tolist()) if not args.val else set()
        extra = [_features(args, lb, args.train, "linear", device, dtype, progress, f"train aug {i + 1}")
                 for i in range(args.aug_passes)]
        for f, y, idx in extra:
            keep = y >= 0
            if held:  # never train on held-out samples
                keep &= ~torch.isin(idx, va[2])
            tr = (torch.cat([tr[0], f[keep]]), torch.cat([tr[1], y[keep]]), torch.cat([tr[2], idx[keep]]))
    return tr, va


def _num_classes(args, lb) -> int:
    return int(json.loads((Path(args.train) / "manifest.json").read_text()).get("num_classes") or 0)


def _cached(args, lb, device, dtype, progress) -> dict:
    (xt, yt, it), (xv, yv, _) = _train_val_features(args, lb, device, dtype, progress)
    C = max(_num_classes(args, lb), int(yt.max()) + 1, int(yv.max()) + 1)
    if args.protocol == "knn":
        from fastdisco.evaluation.baselines import mean_pairwise_cosine
        from fastdisco.evaluation.knn import knn_eval

        ks = args.k if isinstance(args.k, (list, tuple)) else [args.k]
        by_k = {str(k): knn_eval(xt, yt, xv, yv, k=k, temperature=args.temperature, num_classes=C) for k in ks}
        res = dict(by_k[str(ks[0])])
        res["by_k"] = {k: {"top1": r["top1"], "top5": r["top5"]} for k, r in by_k.items()}
        res["val_mean_cosine"] = mean_pairwise_cosine(xv)  # collapse check: between different val images
        return res
    return _semi(args, xt, yt, it, xv, yv, C, progress)


def _probe_kwargs(args) -> dict:
    return dict(epochs=args.epochs, batch_size=args.probe_batch_size, lr=args.lr, weight_decay=args.wd,
                optimizer=args.optimizer, standardize=not args.no_standardize)


def _subsets(args) -> dict[str, list[int]]:
    """--subset files -> {file stem: sample indices of --train} (evaluation.subset_lists)."""
    from fastdisco.evaluation.subset_lists import subset_indices

    return {Path(f).stem: subset_indices(f, args.train, args.subset_source) for f in args.subset_file}


def _semi(args, xt, yt, it, xv, yv, C, progress) -> dict:
    from fastdisco.evaluation.semi import positions_of, semi_eval

    subsets = None
    if args.subset_file:
        subsets = {name: positions_of(it, idx) for name, idx in _subsets(args).items()}
    res = semi_eval(xt, yt, xv, yv, fractions=args.fractions, seed=args.seed, subsets=subsets, train_indices=it,
                    num_classes=C,
                    progress=progress, **_probe_kwargs(args))
    return {"subsets": res}


def _epoch_log(args):
    """The protocols' per-epoch line, printed when the progress bar is off."""
    def log(epoch, row):
        if args.no_progress:
            print(f"epoch {epoch}/{args.epochs}  loss {row['loss']:.4f}  lr {row['lr']:.4g}", flush=True)
    return log


def _linear(args, lb, device, dtype, progress) -> dict:
    if not args.full:
        from fastdisco.evaluation.linear import linear_probe_fast

        (xt, yt, _), (xv, yv, _) = _train_val_features(args, lb, device, dtype, progress)
        C = max(_num_classes(args, lb), int(yt.max()) + 1, int(yv.max()) + 1)
        res = linear_probe_fast(xt, yt, xv, yv, num_classes=C, seed=args.seed, progress=progress,
                                **_probe_kwargs(args))
        res["settings"]["aug_passes"] = args.aug_passes
        return res
    from fastdisco.evaluation.linear import linear_probe_protocol

    train = build_loader(args.train, "linear", args, device, dtype)
    val = build_loader(args.val, "eval", args, device, dtype)
    C = _num_classes(args, lb) or int(getattr(train, "num_classes", 0) or 0)
    if not C:
        raise FastdiscoError(f"cannot tell the number of classes of {args.train}")
    log = _epoch_log(args)
    return linear_probe_protocol(lb.module, train, val, num_classes=C, epochs=args.epochs,
                                 lr=3.0 if args.lr is None else args.lr, momentum=args.momentum,
                                 weight_decay=args.wd, milestones=args.milestones, gamma=args.gamma,
                                 device=device, amp_dtype=dtype, seed=args.seed, progress=progress, log=log)


def _semi_full(args, lb, device, dtype, progress) -> dict:
    """DisCo's semi-supervised protocol on each --subset (evaluation.semi.semi_protocol)."""
    from fastdisco.evaluation.semi import semi_protocol

    subsets = _subsets(args)
    train = build_loader(args.train, "linear", args, device, dtype)
    val = build_loader(args.val, "eval", args, device, dtype)
    C = _num_classes(args, lb) or int(getattr(train, "num_classes", 0) or 0)
    if not C:
        raise FastdiscoError(f"cannot tell the number of classes of {args.train}")
    res = semi_protocol(lb.module, train, val, subsets, num_classes=C, epochs=args.epochs,
                        lr=3.0 if args.lr is None else args.lr, milestones=args.milestones, gamma=args.gamma,
                        momentum=args.momentum, weight_decay=args.wd, device=device, amp_dtype=dtype,
                        seed=args.seed, progress=progress, log=_epoch_log(args))
    return {"subsets": res}


def _ssld(args, lb, device, dtype, progress) -> dict:
    from fastdisco.evaluation.ssld import ssld_eval

    if lb.num_classes == 0:
        raise FastdiscoError(f"{lb.source}: the student has no classifier (num_classes=0): ssld evaluates SSLD "
                             "students; use linear or knn")
    cfg_model = (lb.meta.get("config") or {}).get("model") or {}
    name = args.teacher or cfg_model.get("teacher")
    ckpt = args.teacher_ckpt or cfg_model.get("teacher_ckpt")
    teacher = None
    if name:
        try:
            from fastdisco.models.teacher import load_teacher
        except ImportError as e:
            raise FastdiscoError(f"teacher agreement needs fastdisco.models.teacher, which is not importable ({e})") from None
        from fastdisco.config import ModelConfig

        fmt = args.teacher_format if args.teacher_format != "auto" else cfg_model.get("teacher_format", "auto")
        cfg = ModelConfig(teacher=name, teacher_ckpt=ckpt or "", teacher_format=fmt, teacher_bn="eval")
        teacher = load_teacher(cfg, output="logits").to(device)
    loader = build_loader(args.val or args.train, "eval", args, device, dtype)
    res = ssld_eval(lb.module, loader, teacher=teacher, device=device, amp_dtype=dtype, progress=progress)
    res["teacher"] = {"name": name, "ckpt": ckpt} if teacher is not None else None
    return res
