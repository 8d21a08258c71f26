"""Recognise a teacher checkpoint's layout and convert it to one canonical form.

Every supported format is turned into a `Converted`: the backbone as timm keys (torchvision
ResNet naming is timm's ResNet naming), the projection head as keys of an `nn.Sequential`
(`"0.weight"`, `"1.running_mean"`, ...), the activation the head uses between its layers, and
the keys that were dropped on purpose (momentum encoder, queue, prototypes, DINO's last layer,
BYOL's predictor). Nothing here decides whether a key *should* exist: `fastdisco.models.teacher` loads
the result with strict key matching, so a key that does not map ends in a readable error.

Formats (after unwrapping a container dict and stripping DDP's `module.` prefix):
  mocov2     `encoder_q.*` backbone, `encoder_q.fc.{0,2}` MLP head (2048-2048-128), drops
             `encoder_k.*`, `queue`, `queue_ptr`
  swav       backbone at the top level, `projection_head.*` (Linear-BN-ReLU-Linear), drops
             `prototypes.*`
  byol       `[online_network.]backbone|encoder.*` + `projector|projection|projection_head.*`
             (solo-learn, lightly, BYOL ports), drops predictor / momentum / target networks
  dino       `backbone.*` + `head.mlp.*` (GELU MLP), drops `head.last_layer.*` (prototypes) and
             the student when a full DINO checkpoint (`teacher`/`student`) is given
  fastdisco  our own checkpoint (docs/design.md section 4): `student` = `backbone.*` + `head.*`
  timm       a plain timm / torchvision state dict (no projection head)
  safetensors  a `.safetensors` file; its keys are then detected like any other dict
  paddle     a PaddleClas ResNet50_vd `.pdparams` file (SSLD's ResNet50_vd_ssld teacher), read
             without executing code and mapped to timm `resnet50d` (fastdisco.models.paddle_convert)
SwAV's wide ResNet-50s are the timm names `resnet50w2` / `resnet50w4` (fastdisco.models.swav_resnet;
RN50w2's projection head is 4096-8192-128: set model.teacher_proj_hidden to 8192).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastdisco.errors import FastdiscoError

FORMATS = ("auto", "timm", "mocov2", "swav", "byol", "dino", "fastdisco", "safetensors", "paddle")


class PaddleParams(dict):
    """A Paddle parameter file's `{name: numpy array}` (read_checkpoint of a .pdparams)."""

# Containers in which training scripts nest the weights, tried in this order.
_CONTAINERS = ("state_dict", "model", "online_network_state_dict", "teacher", "model_state_dict", "net")


@dataclass
class Converted:
    """A checkpoint in canonical form (see the module docstring)."""

    format: str
    backbone: dict[str, Any]                         # timm keys, classifier included if present
    head: dict[str, Any] = field(default_factory=dict)  # nn.Sequential keys; {} = no head
    head_act: str = "relu"                           # activation between head layers
    head_expected: bool = False                      # the format always has a projection head
    dropped: list[str] = field(default_factory=list)  # keys deliberately left out
    source_arch: str = ""                            # architecture name the file records, if any
    source_stem: str = ""                            # model.stem a fastdisco checkpoint records, if any


# --------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path) -> Any:
    """Read a checkpoint without executing code: safetensors, or torch.load(weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise FastdiscoError(f"teacher checkpoint not found: {p}")
    if p.suffix == ".pdparams":
        from fastdisco.models.paddle_convert import read_pdparams

        return PaddleParams(read_pdparams(p))
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise FastdiscoError(f"cannot read safetensors file {p}: {str(e).splitlines()[0]}") from None
    import argparse

    import torch

    from fastdisco.io import safe_torch_load

    # DINO / SwAV training checkpoints store their argparse `args`; a Namespace only gets
    # attributes set on it, so allowing it keeps the load free of code execution.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return safe_torch_load(p)


def _is_tensor(v) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def _tensor_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(k, str) and _is_tensor(v)}


def _unwrap(obj: Any) -> tuple[dict, list[str]]:
    """Return the dict of tensors a checkpoint holds, and the top-level entries left aside."""
    if not isinstance(obj, dict):
        raise FastdiscoError(f"checkpoint holds a {type(obj).__name__}, not a dict of weights")
    aside: list[str] = []
    for _ in range(3):  # e.g. {"teacher": {"state_dict": ...}} -- never deeper in practice
        tensors = _tensor_dict(obj)
        if tensors and len(tensors) >= len(obj) / 2:
            break
        for c in _CONTAINERS:
            if isinstance(obj.get(c), dict):
                aside += [k for k in obj if k != c]
                obj = obj[c]
                break
        else:
            break
    tensors = _tensor_dict(obj)
    if not tensors:
        raise FastdiscoError(
            f"no tensors found in the checkpoint (top-level keys: {_fmt_keys(list(obj))})")
    aside += [k for k in obj if k not in tensors]
    return tensors, aside


def _strip_module(sd: dict) -> dict:
    """Remove DDP/DataParallel's `module.` prefix wherever it appears at the start."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


# --------------------------------------------------------------------------- detection
def detect_format(sd: dict) -> str:
    """Name the layout of an unwrapped, `module.`-stripped state dict."""
    keys = list(sd)

    def any_prefix(*ps: str) -> bool:
        return any(k.startswith(ps) for k in keys)

    if any_prefix("encoder_q."):
        return "mocov2"
    if any_prefix("backbone.") and any_prefix("head.mlp.", "head.last_layer."):
        return "dino"
    if any_prefix("backbone.") and any(re.match(r"head\.\d+\.", k) for k in keys):
        return "fastdisco"
    if any_prefix("online_network.") or (
            any_prefix("backbone.", "encoder.") and any_prefix(*_BYOL_HEADS)):
        return "byol"
    if any_prefix("projection_head.", "prototypes."):
        return "swav"
    return "timm"


_BYOL_BACKBONES = ("online_network.backbone.", "online_network.encoder.", "backbone.", "encoder.")
_BYOL_HEADS = ("online_network.projector.", "online_network.projection.", "online_network.projetion.",
               "projector.", "projection_head.", "projection.")
_BYOL_DROP = ("online_network.predictor.", "predictor.", "target_network.", "target_encoder.",
              "target_projector.", "momentum_backbone.", "momentum_projector.", "momentum_encoder.",
              "classifier.", "prediction_head.", "backbone_momentum.", "projection_head_momentum.")


# --------------------------------------------------------------------------- conversion
def _split(sd: dict, backbone: tuple[str, ...], head: tuple[str, ...], drop: tuple[str, ...],
           strip_backbone: bool = True) -> tuple[dict, dict, list[str]]:
    """Sort keys into backbone / head / dropped. Keys matching nothing go to the backbone, where
    strict loading reports them as unexpected."""
    bb, hd, dropped = {}, {}, []
    for k, v in sd.items():
        hp = next((p for p in head if k.startswith(p)), None)
        if k.startswith(drop) or k in drop:  # first: DINO drops head.last_layer inside head.*
            dropped.append(k)
        elif hp is not None:
            hd[k[len(hp):]] = v
        else:
            bp = next((p for p in backbone if k.startswith(p)), None)
            bb[k[len(bp):] if (bp and strip_backbone) else k] = v
    return bb, _normalise_head(hd), dropped


def _normalise_head(hd: dict) -> dict:
    """`layers.0.weight` / `net.0.weight` / `mlp.0.weight` -> `0.weight`: head wrappers name
    their inner Sequential differently; only the indexed layers matter."""
    if not hd or all(re.match(r"\d+\.", k) for k in hd):
        return hd
    firsts = {k.split(".", 1)[0] for k in hd}
    if len(firsts) == 1:
        inner = {k.split(".", 1)[1]: v for k, v in hd.items()}
        if all(re.match(r"\d+\.", k) for k in inner):
            return inner
    return hd  # leave odd layouts alone: building the head reports them


def convert(obj: Any, fmt: str = "auto") -> Converted:
    """Convert a loaded checkpoint to canonical form; `fmt` = "auto" detects the layout."""
    if fmt not in FORMATS:
        raise FastdiscoError(f"unknown teacher format '{fmt}' (known: {', '.join(FORMATS)})")
    if isinstance(obj, PaddleParams) or fmt == "paddle":
        if not isinstance(obj, PaddleParams):
            raise FastdiscoError("teacher format 'paddle' reads PaddleClas .pdparams files; this checkpoint is not one")
        from fastdisco.models.paddle_convert import paddle_to_timm

        return Converted("paddle", paddle_to_timm(obj), {}, "relu", False, [], "resnet50d")
    if isinstance(obj, dict) and (obj.get("format") == "fastdisco-ckpt-v1" or fmt == "fastdisco") \
            and isinstance(obj.get("student"), dict):
        aside = [k for k in obj if k != "student"]
        bb, hd, _ = _split(_tensor_dict(obj["student"]), ("backbone.",), ("head.",), ())
        stem = ((obj.get("config") or {}).get("model") or {}).get("stem", "") if isinstance(obj.get("config"), dict) else ""
        return Converted("fastdisco", bb, hd, "relu", False, aside,
                         str(obj.get("student_name", "")), str(stem or ""))
    arch = str(obj.get("arch", "")) if isinstance(obj, dict) else ""
    sd, aside = _unwrap(obj)
    sd = _strip_module(sd)
    if fmt in ("auto", "safetensors"):
        fmt = detect_format(sd)
    if fmt == "mocov2":
        bb, hd, dropped = _split(sd, ("encoder_q.",), ("encoder_q.fc.",), ("encoder_k.", "queue", "queue_ptr"))
        return Converted("mocov2", bb, hd, "relu", True, aside + dropped, arch)
    if fmt == "swav":
        bb, hd, dropped = _split(sd, (), ("projection_head.",), ("prototypes.",))
        return Converted("swav", bb, hd, "relu", True, aside + dropped, arch)
    if fmt == "byol":
        bb, hd, dropped = _split(sd, _BYOL_BACKBONES, _BYOL_HEADS, _BYOL_DROP)
        return Converted("byol", bb, hd, "relu", True, aside + dropped, arch)
    if fmt == "dino":
        bb, hd, dropped = _split(sd, ("backbone.",), ("head.",), ("head.last_layer.",))
        return Converted("dino", bb, hd, "gelu", True, aside + dropped, arch)
    if fmt == "fastdisco":  # a bare Student.state_dict()
        bb, hd, dropped = _split(sd, ("backbone.",), ("head.",), ())
        return Converted("fastdisco", bb, hd, "relu", False, aside + dropped, arch)
    return Converted("timm", sd, {}, "relu", False, aside, arch)


# --------------------------------------------------------------------------- messages
def _fmt_keys(keys: list[str], limit: int = 8) -> str:
    """A short, readable list: the first few keys and how many more."""
    keys = sorted(map(str, keys))
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def fmt_keys(keys: list[str], limit: int = 8) -> str:
    return _fmt_keys(keys, limit)
