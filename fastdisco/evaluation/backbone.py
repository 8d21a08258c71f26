"""Load the network to evaluate: a student backbone from a fastdisco checkpoint or run directory,
an exported `.safetensors` (with its JSON sidecar), a plain timm state dict, or a teacher
through `fastdisco.models.teacher.load_teacher`.

Keys are always matched strictly: a checkpoint that does not fit the model is an error that lists
the offending keys, never a silently random network (the official DisCo code's `strict=False`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastdisco._compat  # noqa: F401  (torchvision import fix before timm, where the install did not apply it)
import torch

from fastdisco.engine.checkpoint import FORMAT as CKPT_FORMAT  # noqa: F401  (re-exported)
from fastdisco.engine.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of  # noqa: F401
from fastdisco.errors import FastdiscoError

FORMATS = ("auto", "fastdisco", "safetensors", "timm", "teacher", "raw_pixels", "random_init")


@dataclass
class LoadedBackbone:
    """A network ready for feature extraction plus where it came from."""

    module: Any                      # torch.nn.Module in eval mode, requires_grad off
    name: str                        # timm model name
    num_classes: int                 # 0 = headless (features are backbone(x))
    source: str                      # the file it was loaded from
    kind: str                        # "fastdisco" | "safetensors" | "timm" | "teacher"
    run_dir: str | None = None       # the run directory when loaded from a fastdisco run
    meta: dict = field(default_factory=dict)  # step, epoch, method, resolution, ...


def backbone_state_dict(student_state: dict) -> dict:
    """`Student.state_dict()` -> the timm backbone's own keys ("backbone." stripped; head dropped)."""
    # Tolerate wrappers' prefixes (DDP "module.", torch.compile "_orig_mod.").
    plain = {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in student_state.items()}
    sd = {k[len("backbone."):]: v for k, v in plain.items() if k.startswith("backbone.")}
    if not sd:
        raise FastdiscoError("the checkpoint's student state has no 'backbone.*' keys")
    return sd


def classifier_names(name: str) -> tuple[str, ...]:
    """The timm classifier module name(s) of a model, from its pretrained cfg (no network)."""
    import timm

    try:
        clf = timm.models.get_pretrained_cfg_value(name, "classifier")
    except Exception:  # unknown tag etc.: fall back to building the model below
        clf = None
    if clf is None:
        m = timm.create_model(name, pretrained=False, num_classes=0)
        clf = m.pretrained_cfg.get("classifier")
    if clf is None:
        return ()
    return (clf,) if isinstance(clf, str) else tuple(clf)


def infer_num_classes(name: str, state_dict: dict) -> int:
    """Number of classes stored in a timm state dict (0 when it has no classifier weights)."""
    for clf in classifier_names(name):
        w = state_dict.get(f"{clf}.weight")
        if w is not None:
            return int(w.shape[0])
    return 0


def build_timm(name: str, state_dict: dict, num_classes: int | None = None, stem: str = "default"):
    """timm.create_model(name) (stem per fastdisco.models.student.set_stem) with the state dict loaded
    strictly; errors list the keys."""
    import timm

    if num_classes is None:
        num_classes = infer_num_classes(name, state_dict)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise FastdiscoError(f"cannot build timm model '{name}': {str(e).splitlines()[0]}") from None
    from fastdisco.models.student import set_stem

    set_stem(model, stem or "default", f"timm model '{name}'")
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise FastdiscoError(
            f"weights do not fit timm model '{name}' (num_classes={num_classes}): "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if bad:
        k = bad[0]
        raise FastdiscoError(f"weights do not fit timm model '{name}': {len(bad)} shape mismatches, e.g. "
                             f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}")
    model.load_state_dict(state_dict, strict=True)
    return _frozen(model)


def _frozen(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def sidecar_path(weights: str | Path) -> Path:
    """The JSON written next to an exported backbone: OUT.safetensors -> OUT.json."""
    return Path(weights).with_suffix(".json")


def _load_plain_state(p: Path) -> dict:
    """A state dict from .safetensors, or a torch file holding one (optionally under
    'state_dict' / 'model'), loaded weights_only."""
    if p.suffix == ".safetensors":
        import safetensors.torch

        return safetensors.torch.load_file(str(p))
    from fastdisco.io import safe_torch_load

    obj = safe_torch_load(p)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise FastdiscoError(f"{p} does not hold a plain state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone(source: str | Path, *, model: str | None = None, fmt: str = "auto",
                  teacher_format: str = "auto", device=None, seed: int = 0, stem: str = "default") -> LoadedBackbone:
    """Load what `fastdisco eval` evaluates.

    source: a fastdisco checkpoint or run directory, an exported `.safetensors` (model name from
      its sidecar JSON or `model`), a plain timm state dict file (`model` required), or -- with
      fmt="teacher" -- any checkpoint `fastdisco.models.teacher.load_teacher` reads (`model` required).
      fmt="raw_pixels" / "random_init" (baselines, fastdisco.evaluation.baselines): `source` is
      the directory the results go to (its eval/); random_init needs `model` (+ `seed`, `stem`)
      and its BN statistics must be recalibrated by the caller (the eval CLI does it).
    """
    if fmt not in FORMATS:
        raise FastdiscoError(f"unknown checkpoint format '{fmt}' (known: {', '.join(FORMATS)})")
    if fmt in ("raw_pixels", "random_init"):
        lb = _load_baseline(source, model, fmt, seed, stem)
    elif fmt == "teacher":
        lb = _load_teacher(source, model, teacher_format)
    else:
        p = resolve_checkpoint(source)
        if fmt == "auto":
            fmt = "safetensors" if p.suffix == ".safetensors" else _sniff(p)
        if fmt == "fastdisco":
            lb = _load_fastdisco(p, model)
        else:
            lb = _load_plain(p, model, fmt)
    if device is not None:
        lb.module.to(device)
    return lb


def _sniff(p: Path) -> str:
    from fastdisco.io import safe_torch_load

    obj = safe_torch_load(p)
    return "fastdisco" if isinstance(obj, dict) and obj.get("format") == CKPT_FORMAT else "timm"


def _load_fastdisco(p: Path, model: str | None) -> LoadedBackbone:
    ckpt = load_checkpoint(p)
    name = model or ckpt["student_name"]
    cfg = ckpt.get("config") or {}
    stem = (cfg.get("model") or {}).get("stem", "default")
    module = build_timm(name, backbone_state_dict(ckpt["student"]), stem=stem)
    run = run_dir_of(p)
    meta = {"step": ckpt.get("step"), "epoch": ckpt.get("epoch"),
            "method": (cfg.get("method") or {}).get("name"),
            "resolution": (cfg.get("data") or {}).get("resolution"),
            "teacher": (cfg.get("model") or {}).get("teacher"), "stem": stem, "config": cfg}
    return LoadedBackbone(module, name, int(getattr(module, "num_classes", 0)), str(p), "fastdisco",
                          str(run) if run else None, meta)


def _load_plain(p: Path, model: str | None, fmt: str) -> LoadedBackbone:
    meta: dict = {}
    side = sidecar_path(p)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError:
            raise FastdiscoError(f"sidecar {side} is not valid JSON") from None
    name = model or meta.get("model")
    if not name:
        raise FastdiscoError(f"which timm model is {p}? pass --model NAME (no sidecar {side.name} found)")
    module = build_timm(name, _load_plain_state(p), meta.get("num_classes"))
    return LoadedBackbone(module, name, int(getattr(module, "num_classes", 0)), str(p), fmt, None, meta)


def _load_baseline(source, model: str | None, fmt: str, seed: int, stem: str) -> LoadedBackbone:
    from fastdisco.evaluation.baselines import RawPixels, random_init_backbone

    if fmt == "raw_pixels":
        return LoadedBackbone(RawPixels(), "raw_pixels", 0, str(source), fmt, str(source),
                              {"features": "eval-transformed, normalised pixels, flattened"})
    if not model:
        raise FastdiscoError("--format random_init needs --model NAME (a timm architecture)")
    module = _frozen(random_init_backbone(model, seed, stem))
    return LoadedBackbone(module, model, 0, str(source), fmt, str(source),
                          {"features": "random init (timm, seeded), BN statistics recalibrated on --train",
                           "seed": seed, "stem": stem})


def _load_teacher(source, model: str | None, teacher_format: str) -> LoadedBackbone:
    """A teacher evaluated like a student gives the reference row: its pooled backbone features
    (projection head removed), after its own input normalisation, BN with running statistics."""
    try:
        from fastdisco.models.teacher import load_teacher
    except ImportError as e:
        raise FastdiscoError(f"--format teacher needs fastdisco.models.teacher, which is not importable ({e})") from None
    from fastdisco.config import ModelConfig

    p = Path(source)
    if not p.is_file():
        raise FastdiscoError(f"teacher checkpoint not found: {p}")
    # teacher_proj_hidden=0: accept whatever head the file has; it is dropped below anyway.
    cfg = ModelConfig(teacher=model or "", teacher_ckpt=str(p), teacher_format=teacher_format, teacher_bn="eval",
                      teacher_proj_hidden=0)
    teacher = load_teacher(cfg, output="embedding")
    teacher.head = torch.nn.Identity()  # Teacher(x) = head(backbone(renormalised x))
    teacher.num_classes = 0
    return LoadedBackbone(teacher, getattr(teacher, "name", "") or model or "", 0, str(p), "teacher", None,
                          {"teacher_format": getattr(teacher, "format", teacher_format),
                           "features": "teacher backbone, pooled (projection head removed)"})
