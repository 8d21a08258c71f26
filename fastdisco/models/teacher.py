"""The frozen teacher (docs/design.md section 5).

`load_teacher(cfg.model, output)` builds the timm model by name (never downloads weights),
reads the local checkpoint without executing code, converts its keys from whichever format it
is in (fastdisco.models.teacher_formats), and loads them with strict key matching: a checkpoint that
does not fit is an error that lists the keys, never a silently random teacher.

`Teacher(x)` takes the loader's IMAGENET-normalised views, re-normalises them to the teacher's
own mean/std, and returns the final embedding (backbone + projection head, not L2-normalised:
the loss does that) or the classifier logits. It has no trainable parameters, runs under
`torch.no_grad()`, can be compiled on its own (`teacher.compile()`), and must never be wrapped
in DDP.

BatchNorm mode (`cfg.model.teacher_bn`):
  "train"  batch statistics, as the official DisCo and SSLD code run their teachers. Unlike the
           official code we do NOT update the running statistics (BN layers get
           `track_running_stats=False`): in train mode they are never read, so the teacher's
           outputs are the same, while its weights stay exactly those of the file.
           Statistics per group of `cfg.model.teacher_bn_group` samples of each view, like the
           official per-GPU BN (32 per GPU per view): every BN (the head's BatchNorm1d too) is
           the student's GroupedBatchNorm (fastdisco.models.grouped_bn), so the two views run
           as one batched forward (`batched_views(2)`) with statistics never mixing them.
           0 = the whole per-device batch of each view.
  "eval"   the stored running statistics; outputs do not depend on the rest of the batch.
           For training (`fold_bn=True`, set by the engine) each conv -> BN pair of the backbone
           is folded into one conv (fastdisco.models.fold_bn): the same outputs up to rounding.

Weights: `dtype` (the engine passes bf16 when it trains under bf16 autocast on CUDA:
`teacher_dtype`), so autocast does not recast fp32 weights on every call; fp32 otherwise.
Every other layer (dropout, drop-path) is always in eval mode; `.train()` / `.eval()` calls from
the engine do not change any of this.
"""
from __future__ import annotations

import logging
from typing import Literal

import fastdisco._compat  # noqa: F401  (torchvision import fix before timm, where the install did not apply it)
import torch
from torch import nn

from fastdisco.models.teacher_formats import Converted, convert, fmt_keys, read_checkpoint
from fastdisco.errors import FastdiscoError

from fastdisco.augment.recipes import IMAGENET_MEAN, IMAGENET_STD  # the loader's normalisation

log = logging.getLogger("fastdisco.models.teacher")

Output = Literal["embedding", "logits"]


class Teacher(nn.Module):
    """A frozen backbone (+ projection head) with its own input normalisation."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mean, std, bn: str, output: str,
                 name: str = "", fmt: str = ""):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.bn_mode = bn
        self.output = output
        self.name = name
        self.format = fmt
        # x_teacher = (x_in * in_std + in_mean - mean) / std = x_in * scale + shift
        in_mean, in_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.renormalise = not (torch.allclose(mean, in_mean) and torch.allclose(std, in_std))
        self.register_buffer("scale", (in_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((in_mean - mean) / std).view(1, 3, 1, 1), persistent=False)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and bn == "train":
                m.track_running_stats = False  # batch statistics, running stats left untouched
        self.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "Teacher":
        """Ignore the requested mode: everything eval, BN as configured (see module doc)."""
        super().train(False)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # the BN alone, not a grouped BN's `post`
                m.training = self.bn_mode == "train"
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalise:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        return self.head(self.backbone(x))


# --------------------------------------------------------------------------- head
def build_head(sd: dict, act: str, in_features: int, where: str) -> nn.Sequential:
    """An nn.Sequential whose layers are read off the state dict: a 2-D `weight` is a Linear,
    `running_mean` a BatchNorm1d, an index with no parameters the activation."""
    try:
        idx = sorted({int(k.split(".", 1)[0]) for k in sd})
    except ValueError:
        raise FastdiscoError(f"cannot read the projection head of {where}: keys {fmt_keys(list(sd))}") from None
    layers: list[nn.Module] = []
    width = in_features
    for i in range(idx[-1] + 1):
        p = {k.split(".", 1)[1]: v for k, v in sd.items() if k.split(".", 1)[0] == str(i)}
        if not p:
            layers.append(nn.GELU() if act == "gelu" else nn.ReLU(inplace=True))
            continue
        w = p.get("weight")
        if w is not None and w.ndim == 2:
            layer: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias="bias" in p)
            fan_in, width_out = w.shape[1], w.shape[0]
        elif "running_mean" in p:
            n = p["running_mean"].shape[0]
            layer = nn.BatchNorm1d(n, affine="weight" in p)
            fan_in, width_out = n, n
        else:
            raise FastdiscoError(f"unsupported layer {i} in the projection head of {where}: {fmt_keys(list(p))}")
        if fan_in != width:
            raise FastdiscoError(
                f"projection head layer {i} of {where} expects width {fan_in} but the teacher "
                f"architecture gives {width}: the checkpoint does not fit it")
        width = width_out
        layers.append(layer)
    head = nn.Sequential(*layers)
    _strict_load(head, sd, f"the projection head of {where}")
    return head


# --------------------------------------------------------------------------- loading
def _strict_load(module: nn.Module, sd: dict, where: str, hint: str = "") -> None:
    """load_state_dict with a readable one-line error listing missing / unexpected / mis-shaped
    keys. Only BN's `num_batches_tracked` may be missing (old checkpoints lack it; it never
    changes an output)."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {fmt_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {fmt_keys(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} keys of the wrong shape (file vs model): {fmt_keys(shapes, 4)}")
        raise FastdiscoError(f"{where} does not fit: {'; '.join(parts)}{hint}")
    full = dict(own)  # keeps the model's num_batches_tracked where the file has none
    full.update(sd)
    module.load_state_dict(full, strict=True)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "fc"
    names = clf if isinstance(clf, (tuple, list)) else (clf,)
    return tuple(f"{n}." for n in names)


def load_teacher(model_cfg, output: Output = "embedding", device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, channels_last: bool = False, fold_bn: bool = False) -> Teacher:
    """Build the frozen teacher described by `cfg.model` (see the module docstring). `fold_bn`
    (teacher_bn eval; the engine sets it): conv -> BN pairs folded, equal up to rounding."""
    import timm

    if output not in ("embedding", "logits"):
        raise FastdiscoError(f"teacher output must be 'embedding' or 'logits', got {output!r}")
    if not model_cfg.teacher_ckpt:
        raise FastdiscoError("model.teacher_ckpt is empty: a teacher needs a local checkpoint file "
                             "(weights are never downloaded)")
    conv: Converted = convert(read_checkpoint(model_cfg.teacher_ckpt), model_cfg.teacher_format)
    name = model_cfg.teacher or conv.source_arch
    if not name:
        raise FastdiscoError("model.teacher is empty: name the teacher's timm architecture (e.g. resnet50)")
    where = f"teacher checkpoint {model_cfg.teacher_ckpt} (format {conv.format})"
    hint = (f" (detected format '{conv.format}'" + (f", file records arch '{conv.source_arch}'" if conv.source_arch else "")
            + f"; check model.teacher='{name}' and model.teacher_format)")
    try:
        backbone = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise FastdiscoError(f"model.teacher: {e}") from None
    from fastdisco.models.student import set_stem

    want_stem = getattr(model_cfg, "teacher_stem", "") or ""
    if want_stem and conv.source_stem and want_stem != conv.source_stem:
        raise FastdiscoError(f"{where}: model.teacher_stem is '{want_stem}' but the checkpoint was trained "
                             f"with model.stem '{conv.source_stem}'")
    set_stem(backbone, want_stem or conv.source_stem or "default", f"model.teacher '{name}'")

    sd = dict(conv.backbone)
    dropped = list(conv.dropped)
    clf_keys = [k for k in sd if k.startswith(_classifier_prefixes(backbone))]
    head: nn.Module = nn.Identity()
    if output == "logits":
        weights = [k for k in clf_keys if k.endswith("weight") and sd[k].ndim == 2]
        if not weights:
            raise FastdiscoError(f"{where} has no classifier ({'/'.join(_classifier_prefixes(backbone))}*) "
                                 f"but SSLD needs the teacher's logits{hint}")
        backbone.reset_classifier(int(sd[weights[-1]].shape[0]))
        dropped += [f"head.{k}" for k in conv.head]
    else:
        for k in clf_keys:  # the embedding comes before the classifier
            dropped.append(k)
            sd.pop(k)
    _strict_load(backbone, sd, where, hint)  # the backbone first: its error says the most
    if output == "embedding":
        if conv.head:
            head = build_head(conv.head, conv.head_act, backbone.num_features, where)
            hidden = [m.out_features for m in head if isinstance(m, nn.Linear)]
            want = model_cfg.teacher_proj_hidden
            if want and len(hidden) > 1 and hidden[0] != want:
                raise FastdiscoError(
                    f"{where}: projection head hidden width is {hidden[0]}, model.teacher_proj_hidden "
                    f"says {want} (set it to {hidden[0]}, or 0 to accept the checkpoint's)")
        elif conv.head_expected:
            raise FastdiscoError(f"{where} has no projection head, which the embedding output "
                                 f"(DisCo distills the final embedding) needs{hint}")
        elif conv.format == "fastdisco" and model_cfg.teacher_proj_hidden:
            raise FastdiscoError(f"{where} has no projection head (head.* keys) but model.teacher_proj_hidden="
                                 f"{model_cfg.teacher_proj_hidden} expects one; set model.teacher_proj_hidden=0 "
                                 "to distil its pooled features")
        else:
            log.info("teacher %s: no projection head in the checkpoint; embedding = pooled features", name)
    if dropped:
        log.info("teacher %s: left out %d unused checkpoint entries: %s", name, len(dropped), fmt_keys(dropped))

    mean, std = _teacher_norm(model_cfg, conv.format, backbone)
    backbone, head = _set_bn(backbone, head, model_cfg, name, fold_bn)
    teacher = Teacher(backbone, head, mean, std, model_cfg.teacher_bn, output, name, conv.format)
    teacher.to(device=device)
    if dtype is not None:
        teacher.to(dtype=dtype)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


def teacher_dtype(precision: str, device) -> torch.dtype | None:
    """The teacher's weight dtype for a run: bf16 under bf16 autocast on CUDA (the teacher takes
    no gradient, so nothing needs fp32 master weights); None (fp32 as loaded) otherwise, CPU included."""
    return torch.bfloat16 if precision == "bf16" and torch.device(device).type == "cuda" else None


def _set_bn(backbone: nn.Module, head: nn.Module, model_cfg, name: str,
            fold_bn: bool) -> tuple[nn.Module, nn.Module]:
    """teacher_bn train: grouped BN statistics (module docstring); eval + fold_bn: conv -> BN folded."""
    from fastdisco.models.grouped_bn import convert_grouped_bn

    if model_cfg.teacher_bn == "train":
        group = getattr(model_cfg, "teacher_bn_group", 32)
        return (convert_grouped_bn(backbone, group, include_1d=True),
                convert_grouped_bn(head, group, include_1d=True))
    if not fold_bn:
        return backbone, head
    from fastdisco.models.fold_bn import fold_conv_bn

    size = int(((getattr(backbone, "pretrained_cfg", None) or {}).get("input_size") or (3, 64, 64))[-1])
    probe = torch.randn(2, 3, min(size, 64), min(size, 64), generator=torch.Generator().manual_seed(0))
    backbone, folded = fold_conv_bn(backbone.eval(), probe)
    if folded:
        log.info("teacher %s: %d conv -> BN pairs folded (teacher_bn=eval)", name, folded)
    return backbone, head


def _teacher_norm(model_cfg, fmt: str, model: nn.Module) -> tuple[tuple, tuple]:
    """The mean/std the teacher was trained with: the config's if set; ImageNet's for the SSL
    formats (MoCo, SwAV, BYOL, DINO and fastdisco all train on ImageNet-normalised input);
    timm's pretrained_cfg for plain timm weights."""
    mean = tuple(getattr(model_cfg, "teacher_mean", ()) or ())
    std = tuple(getattr(model_cfg, "teacher_std", ()) or ())
    if not mean or not std:
        if fmt == "timm":
            cfg = getattr(model, "pretrained_cfg", None) or {}
            mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        else:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    if len(mean) != 3 or len(std) != 3:
        raise FastdiscoError(f"model.teacher_mean / teacher_std need 3 values each, got {mean} / {std}")
    return mean, std
