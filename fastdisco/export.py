"""The deployable student: its timm backbone only (the command line is fastdisco.cli.export).

DisCo's point is "no extra parameters at deployment": the projection head, momentum encoder,
queue and teacher stay behind. `export_student(RUN, OUT)` writes

- OUT (`.safetensors`): the timm model's own state dict, which timm loads with strict keys and
  without any network access (a local `file` in the pretrained cfg is the highest-priority source
  after an in-memory state dict):

      timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=OUT, num_classes=K))

  K is the exported classifier size (0 for DisCo / MoCo students, which have none). It must be in
  the overlay, not a `num_classes=` keyword: timm drops the classifier keys and loads non-strictly
  whenever the requested num_classes differs from the pretrained cfg's (1000 by default), and
  without it a headless backbone fails with missing `fc.*` keys.
- OUT.json, the sidecar (model, num_classes, input size, mean/std, source checkpoint, provenance);
- a Hugging Face-style folder (default: OUT without its suffix) in the layout of timm's
  `save_for_hf` / `push_to_hub`: `config.json` (timm's own `save_config_for_hf`, with the
  architecture, num_classes, model args and the eval preprocessing), `model.safetensors` and a
  model card `README.md`. It loads strictly in one line: the config's num_classes equals the
  weights', so timm keeps strict key matching:

      timm.create_model("local-dir:FOLDER", pretrained=True)

  (`pretrained=True` is what loads the folder's weights; without it timm builds the architecture
  from config.json with random weights.)

After writing, the export is checked: timm loads OUT and the folder with exactly those calls and
gives the same outputs as the checkpoint's backbone. `export_onnx` also writes an ONNX graph and
checks it against PyTorch (needs the `onnx` extra: pip install 'fastdisco[onnx]').
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

import fastdisco._compat  # noqa: F401  (torchvision import fix before timm, where the install did not apply it)
from fastdisco.augment.recipes import EVAL_CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
from fastdisco.errors import FastdiscoError

FORMAT = "fastdisco-backbone-v1"
HF_WEIGHTS = "model.safetensors"  # timm's HF_SAFE_WEIGHTS_NAME
# timm pretrained-cfg fields that describe timm's own published weights of the architecture,
# not these: dropped from config.json.
_FOREIGN_CFG_KEYS = ("tag", "license", "notes", "paper_ids", "paper_name", "origin_url", "label_offset")

_DISPLAY = {"disco": "DisCo", "ssld": "SSLD", "mocov2": "MoCo v2", "supervised": "supervised"}
METHODS = {
    "disco": "DisCo: MoCo v2 contrastive learning plus distillation of the frozen teacher's embedding "
             "(consistency between student and teacher on both views)",
    "ssld": "SSLD: the student learns the frozen teacher's softened class distribution (soft labels)",
    "mocov2": "MoCo v2: self-supervised contrastive learning (no teacher)",
    "supervised": "supervised training on the dataset's labels (no teacher)",
}


def load_call(name: str, out: str | Path, num_classes: int) -> str:
    """The exact Python call that loads the `.safetensors` export strictly."""
    return (f"timm.create_model({name!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(out)!r}, num_classes={num_classes}))")


def hf_load_call(folder: str | Path) -> str:
    """The exact Python call that loads the Hugging Face-style folder strictly."""
    return f"timm.create_model({'local-dir:' + str(folder)!r}, pretrained=True)"


def timm_load(name: str, out: str | Path, num_classes: int):
    """Load an export through timm's pretrained path (strict keys, local file only)."""
    import timm

    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out), num_classes=num_classes))


def hf_load(folder: str | Path):
    """Load a Hugging Face-style export folder (strict keys, local files only)."""
    import timm

    return timm.create_model(f"local-dir:{folder}", pretrained=True)


def export_student(ckpt_path: str | Path, out: str | Path, *, hf_dir: str | Path | bool | None = None,
                   resolution: int | None = None, verify: bool = True) -> dict:
    """Write the student backbone of a fastdisco checkpoint (or run directory): OUT.safetensors,
    its sidecar OUT.json and, unless hf_dir is False, a Hugging Face-style folder (config.json,
    model.safetensors, README.md) at hf_dir (None or True: OUT without its suffix).

    Returns the sidecar dict, plus `hf_dir` / `hf_load` (the folder and its one-line load call)
    and `load` with OUT's full path."""
    import safetensors.torch
    import torch

    from fastdisco import provenance
    from fastdisco.engine.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of
    from fastdisco.evaluation.backbone import backbone_state_dict, build_timm, sidecar_path
    from fastdisco.io import atomic_write, write_json

    out = Path(out)
    src = resolve_checkpoint(ckpt_path)
    ckpt = load_checkpoint(src)
    name = ckpt["student_name"]
    sd = backbone_state_dict(ckpt["student"])
    model = build_timm(name, sd)  # proves the keys fit the timm model exactly
    num_classes = int(getattr(model, "num_classes", 0))
    # Own, contiguous CPU copies: safetensors refuses views that share storage.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    cfg = ckpt.get("config") or {}
    res = int(resolution or (cfg.get("data") or {}).get("resolution") or 224)
    meta = {"format": FORMAT, "model": name, "num_classes": str(num_classes)}
    blob = safetensors.torch.save(tensors, metadata=meta)
    with atomic_write(out, "wb") as f:
        f.write(blob)
    prov = provenance.collect()
    side = {
        "format": FORMAT,
        "model": name,
        "num_classes": num_classes,
        "feature_dim": int(getattr(model, "num_features", 0)),
        "input_size": [3, res, res],
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "load": load_call(name, out.name, num_classes),
        "source_checkpoint": {"path": str(src.resolve()), "sha256": _sha256(src), "step": ckpt.get("step"),
                              "epoch": ckpt.get("epoch"), "method": (cfg.get("method") or {}).get("name"),
                              "teacher": (cfg.get("model") or {}).get("teacher")},
        "num_params": int(sum(t.numel() for k, t in tensors.items() if t.is_floating_point())),
        "provenance": prov,
    }
    folder = None if hf_dir is False else (out.with_suffix("") if hf_dir in (None, True) else Path(hf_dir))
    if folder is not None:
        if folder.resolve() == out.resolve():
            raise FastdiscoError(f"the Hugging Face folder cannot be OUT itself ({out})")
        run = run_dir_of(src)
        _write_hf_dir(folder, model, blob, res=res, label_names=_label_names(cfg, num_classes))
        card = model_card(name=name, num_classes=num_classes, folder=folder, cfg=cfg, ckpt=ckpt, side=side,
                          run=run, res=res)
        with atomic_write(folder / "README.md", "w") as f:
            f.write(card)
        side["hf_dir"] = _relative(folder, out.parent)
    if verify:
        x = torch.randn(2, 3, min(res, 64), min(res, 64), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = model(x)
            checks = [(out, timm_load(name, out, num_classes))]
            if folder is not None:
                checks.append((folder, hf_load(folder)))
            for where, reloaded in checks:
                diff = (reloaded.eval()(x) - ref).abs().max().item()
                if diff != 0.0:
                    raise FastdiscoError(
                        f"export check failed: timm reload of {where} differs from the checkpoint by {diff:.3g}")
        side["verified"] = "timm reload gives identical outputs" + (" (file and folder)" if folder else "")
    write_json(sidecar_path(out), side)
    side["load"] = load_call(name, out, num_classes)  # full path for the console message
    if folder is not None:
        side["hf_dir"] = str(folder)
        side["hf_load"] = hf_load_call(folder.resolve())
    return side


export_backbone = export_student  # the former name, kept for existing callers


# --------------------------------------------------------------------------- Hugging Face folder
def _write_hf_dir(folder: Path, model, blob: bytes, *, res: int, label_names: list | None) -> None:
    """config.json (timm's save_config_for_hf) + model.safetensors, the layout of timm's save_for_hf."""
    import tempfile

    from timm.models._hub import save_config_for_hf

    from fastdisco.io import atomic_write, write_json

    folder.mkdir(parents=True, exist_ok=True)
    # The eval preprocessing of fastdisco's loaders: resize to int(res / 0.875) (bilinear,
    # antialiased), centre crop res, ImageNet mean/std.
    data_config = {"input_size": (3, res, res), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                   "crop_pct": EVAL_CROP_RATIO, "crop_mode": "center", "interpolation": "bilinear"}
    model_config = {"label_names": label_names} if label_names else None
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(model, str(Path(tmp) / "config.json"), model_config=model_config, data_config=data_config)
        config = json.loads((Path(tmp) / "config.json").read_text())
    for key in _FOREIGN_CFG_KEYS:
        config.get("pretrained_cfg", {}).pop(key, None)
    if int(config.get("num_classes", -1)) != int(getattr(model, "num_classes", 0)):
        raise FastdiscoError(f"config.json num_classes {config.get('num_classes')} differs from the model's "
                             f"{model.num_classes}: timm would load it non-strictly")
    with atomic_write(folder / HF_WEIGHTS, "wb") as f:
        f.write(blob)
    write_json(folder / "config.json", config)


def _label_names(cfg: dict, num_classes: int) -> list | None:
    """Class names of a classifier student, from its prepared dataset's manifest (when they fit)."""
    if num_classes <= 0:
        return None
    man = _manifest(cfg) or {}
    classes = man.get("classes")
    if isinstance(classes, list) and len(classes) == num_classes and all(isinstance(c, str) for c in classes):
        return classes
    return None


def _manifest(cfg: dict) -> dict | None:
    path = (cfg.get("data") or {}).get("path")
    if not path:
        return None
    try:
        return json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- model card
def model_card(*, name: str, num_classes: int, folder: Path, cfg: dict, ckpt: dict, side: dict,
               run: Path | None, res: int) -> str:
    """A short README.md: teacher, method, data, length of training, eval numbers, provenance,
    and the one-line load call."""
    m, data, train = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("train") or {}
    method = (cfg.get("method") or {}).get("name") or "unknown"
    teacher = m.get("teacher") or ""
    kind = f"classifier with {num_classes} classes" if num_classes else "headless backbone (features, no classifier)"
    call = hf_load_call(folder.resolve())
    lines = [
        "---",
        "library_name: timm",
        "tags:",
        "- timm",
        "- fastdisco",
        f"- {method}",
        "- knowledge-distillation" if teacher else "- self-supervised",
        "---",
        "",
        f"# {name}: a student trained by fastdisco ({_DISPLAY.get(method, method)})",
        "",
        f"A `{name}` {kind}, {side['num_params']:,} parameters, feature dimension {side['feature_dim']}.",
        "",
        "## Load",
        "",
        "```python",
        "import timm",
        f"model = {call}",
        "```",
        "",
        "Strict keys, no network. `pretrained=True` loads this folder's weights; without it timm builds the "
        "architecture with random weights. Input: RGB, resize the shorter side to "
        f"{int(res / EVAL_CROP_RATIO)} and centre-crop {res}x{res}, mean {list(IMAGENET_MEAN)}, "
        f"std {list(IMAGENET_STD)} (in `config.json`: `timm.data.resolve_data_config({{}}, model=model)`).",
        "",
        "## Training",
        "",
        f"- Method: {METHODS.get(method, method)}.",
    ]
    if teacher:
        t = f"`{teacher}`"
        if m.get("teacher_ckpt"):
            t += f", weights `{Path(m['teacher_ckpt']).name}` (format {m.get('teacher_format') or 'auto'})"
        lines.append(f"- Teacher (frozen, not part of this model): {t}.")
    else:
        lines.append("- Teacher: none.")
    man = _manifest(cfg)
    if data.get("path"):
        d = f"- Data: prepared dataset `{data['path']}`"
        if man:
            d += f", {man.get('num_samples')} samples"
            if man.get("num_classes"):
                d += f", {man['num_classes']} classes"
        d += f"; resolution {data.get('resolution')}, batch {data.get('batch_size')} per device, " \
             f"augmentation `{data.get('recipe')}`."
        lines.append(d)
    length = f"- Length: {ckpt.get('step')} optimizer steps, epoch {ckpt.get('epoch')}"
    if train.get("max_steps"):
        length += f" (planned: {train['max_steps']} steps)"
    elif train.get("epochs") is not None:
        length += f" (planned: {train['epochs']:g} epochs)"
    lines.append(length + ".")
    o = cfg.get("optim") or {}
    if o:
        lines.append(f"- Optimizer: {o.get('name')}, lr {o.get('lr')} at batch {o.get('base_batch')}, "
                     f"weight decay {o.get('weight_decay')}.")
    lines += ["", "## Evaluation", ""]
    rows = eval_rows(run)
    if rows:
        lines += ["| protocol | top-1 | top-5 | at step | val data |", "|---|---|---|---|---|"]
        lines += [f"| {r['protocol']} | {_pct(r['top1'])} | {_pct(r['top5'])} | {r['step']} | {r['val']} |"
                  for r in rows]
        lines += ["", f"From `{run}/eval/*.json` (`fastdisco eval`)."]
    else:
        lines.append("No `fastdisco eval` results were found in the run directory at export time.")
    src = side["source_checkpoint"]
    prov = side.get("provenance") or {}
    git = prov.get("git") or {}
    commit = git.get("commit") or "unknown"
    if git.get("dirty"):
        commit += " (with uncommitted changes)"
    lines += [
        "",
        "## Provenance",
        "",
        f"- Exported by fastdisco {(prov.get('versions') or {}).get('fastdisco') or _version()}, commit {commit}, "
        f"on {prov.get('date') or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}.",
        f"- Source checkpoint: `{src['path']}` (sha256 {src['sha256']}).",
    ]
    trained = _read_json(run / "provenance.json") if run else None
    if trained:
        tg = trained.get("git") or {}
        lines.append(f"- Trained with fastdisco {(trained.get('versions') or {}).get('fastdisco')}, "
                     f"commit {tg.get('commit') or 'unknown'}, started {trained.get('date')}, "
                     f"world size {trained.get('world_size')}.")
    lines.append("")
    return "\n".join(lines)


def eval_rows(run: Path | None) -> list[dict]:
    """top-1 / top-5 of every `fastdisco eval` record in RUN/eval/*.json (kNN, linear, ssld, and
    one row per semi-supervised subset), sorted by protocol."""
    if run is None or not (run / "eval").is_dir():
        return []
    rows = []
    for p in sorted((run / "eval").glob("*.json")):
        rec = _read_json(p)
        if not isinstance(rec, dict) or "protocol" not in rec:
            continue
        step = (rec.get("model") or {}).get("step")
        val = (rec.get("data") or {}).get("val") or (rec.get("data") or {}).get("train") or ""
        if isinstance(rec.get("subsets"), dict):
            for sub, r in rec["subsets"].items():
                if isinstance(r, dict):
                    rows.append({"protocol": f"{rec['protocol']} {sub}", "top1": r.get("top1"), "top5": r.get("top5"),
                                 "step": step, "val": val})
            continue
        row = {"protocol": rec["protocol"], "top1": rec.get("top1"), "top5": rec.get("top5"), "step": step, "val": val}
        rows.append(row)
        if rec.get("agreement_top1") is not None:
            rows.append({"protocol": f"{rec['protocol']} teacher agreement", "top1": rec["agreement_top1"],
                         "top5": None, "step": step, "val": val})
    return rows


def _pct(v) -> str:
    return "n/a" if v is None else f"{float(v):.2f}"


def _read_json(p: Path):
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None


def _version() -> str:
    from fastdisco import __version__

    return __version__


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- ONNX
def export_onnx(weights: str | Path, onnx_out: str | Path, *, opset: int = 17, atol: float = 1e-4) -> float:
    """Export the backbone in `weights` (an export with its sidecar) to ONNX, check it against
    PyTorch on a random batch, and return the max absolute difference."""
    import torch

    from fastdisco.errors import require
    from fastdisco.evaluation.backbone import sidecar_path

    hint = "install the extra: pip install 'fastdisco[onnx]'"
    onnx = require("onnx", "onnx", hint)
    side = json.loads(sidecar_path(weights).read_text())
    model = timm_load(side["model"], weights, side["num_classes"]).eval()
    _, h, w = side["input_size"]
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_out.with_name(f".{onnx_out.name}.tmp")
    try:
        # The TorchScript-based exporter needs only `onnx`; the dynamo one also needs onnxscript.
        torch.onnx.export(model, (x,), str(tmp), input_names=["images"], output_names=["output"],
                          dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=opset, dynamo=False)
        onnx.checker.check_model(str(tmp))
        with torch.no_grad():
            ref = model(x).numpy()
        got = _run_onnx(str(tmp), x.numpy())
        err = float(abs(got - ref).max())
        if not err <= atol:
            raise FastdiscoError(f"ONNX check failed: max |onnx - torch| = {err:.3g} > atol {atol}")
        tmp.replace(onnx_out)
    finally:
        tmp.unlink(missing_ok=True)
    return err


def _run_onnx(path: str, x):
    """onnxruntime when installed; else onnx's pure-Python reference evaluator (slow, exact)."""
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return sess.run(None, {"images": x})[0]
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(path).run(None, {"images": x})[0]
