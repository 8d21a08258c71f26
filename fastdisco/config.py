"""Typed configuration: dataclass defaults, YAML recipes that hold only overrides, and
`--set section.key=value` on the command line.

An unknown key or a value of the wrong type is a one-line UsageError that names the key.
The resolved config is written into every run directory (`to_dict` -> config.yaml).
Sections are owned by the part of the code that reads them; keep each field documented.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastdisco.errors import UsageError


# --------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """What to read and how to augment it (fastdisco.loader)."""

    path: str = ""                      # a prepared dataset (output of `fastdisco prepare-data`)
    backend: Literal["auto", "torch", "dali", "ffcv"] = "auto"  # auto = dali (GPU decode) on CUDA when DALI is installed and the dataset has shards, else torch
    decode_device: Literal["auto", "mixed", "cpu"] = "auto"  # mixed = GPU decode (dali; torch: nvJPEG via torchvision), auto = mixed on CUDA where available
    recipe: Literal["mocov2", "byol", "ssld", "linear", "eval"] = "mocov2"  # augmentation set
    resolution: int = 224
    batch_size: int = 256               # per device (per rank), source images
    num_workers: int = 4
    drop_last: bool = True
    seed: int = 0
    # resize of the random crop: True = bilinear with antialias (torchvision / PIL / DALI
    # behaviour); False = plain bilinear, one batched grid_sample (faster, aliased downscale)
    antialias: bool = True
    # torch backend: where the crop + resize runs. "worker" = CPU DataLoader workers (small
    # uint8 views cross to the device); "device" = whole decoded images go to the device and
    # are cropped there; "auto" = device on CUDA, worker otherwise
    crop_on: Literal["auto", "worker", "device"] = "auto"
    # torch backend: decode each JPEG at 1/2, 1/4 or 1/8 size (libjpeg DCT scaling) when all its
    # crops keep >= data.resolution pixels there; false = full size (views replay from full images)
    reduced_decode: bool = True
    prefetch: int = 1                   # CUDA: batches prepared ahead on a side stream (0 = none)
    dali_threads: int = 0               # DALI CPU threads (0 = this process's cores / ranks on the node)


@dataclass
class ModelConfig:
    """Student, its projection head, and the frozen teacher (fastdisco.models.student, fastdisco.models.teacher)."""

    student: str = "efficientnet_b0"    # any timm model name (randomly initialised, never downloaded)
    num_classes: int = 1000             # ssld / supervised only: the student's logits, must match the teacher's
    proj_hidden: int = 2048             # DisCo's bottleneck fix; 512/1280 for MoCo v2 baselines
    proj_dim: int = 128
    # "small": 3x3 stride-1 first conv and no max-pool (timm ResNet family incl. resnet10t's deep
    # stem; other models are an error), for 32-64 px images; "default": timm's ImageNet stem
    stem: Literal["default", "small"] = "default"
    teacher: str = ""                   # timm model name of the teacher ("" = none)
    teacher_ckpt: str = ""              # local checkpoint file (never downloaded)
    teacher_format: Literal["auto", "timm", "mocov2", "swav", "byol", "dino", "fastdisco", "safetensors", "paddle"] = "auto"
    teacher_stem: Literal["", "default", "small"] = ""  # "" = the stem a fastdisco checkpoint records (else default)
    teacher_bn: Literal["train", "eval"] = "train"  # official DisCo and SSLD: train mode; eval folds conv+BN
    # teacher_bn train: BN statistics per group of this many samples of each view (official DisCo:
    # 32 per GPU per view); one grouped implementation with the student's. 0 = each view's whole batch
    teacher_bn_group: int = 32
    teacher_proj_hidden: int = 2048     # teacher's MoCo v2 head 2048-2048-128; checked against the file (0 = accept any)
    teacher_mean: tuple[float, ...] = ()  # teacher's input mean; () = ImageNet for SSL formats, timm's cfg for timm weights
    teacher_std: tuple[float, ...] = ()   # teacher's input std; () = as teacher_mean
    # Shuffle-BN (mocov2/disco): student BN statistics per group of this many samples and a key
    # batch shuffled across all ranks, so positive pairs do not share BN statistics. Needs a
    # per-rank batch of whole groups (one device: at least 2 groups); else refused. 0 = off.
    shuffle_bn_group: int = 32
    sync_bn: bool = False               # SyncBatchNorm across DDP ranks instead (CUDA/nccl)
    # start the student from these weights: a fastdisco run checkpoint / run directory or an
    # exported .safetensors backbone (strict keys); optimizer, schedule and step start fresh
    # ("" = random init). A run that resumes from its own checkpoint ignores it
    init_ckpt: str = ""


@dataclass
class MethodConfig:
    """The training objective (fastdisco.models.methods)."""

    name: Literal["mocov2", "disco", "ssld", "supervised"] = "disco"
    temperature: float = 0.2            # InfoNCE (MoCo v2 / DisCo: 0.2)
    queue_size: int = 65536             # MoCo negatives queue length K (keys of dim model.proj_dim)
    momentum: float = 0.999             # key encoder EMA, applied once per optimizer step
    distill_weight: float = 1.0         # DisCo: weight of each view's distillation term
    # DisCo's distillation weight per view. "sum" (default, the official DisCo weight): the official
    # code's MSELoss(reduction='sum') over its per-GPU batch of 32 (loss = ce + mse_q + mse_k),
    # reproduced as exactly 32 x the batch-mean (2 - 2 cos) whatever our per-device batch is
    # (fastdisco.models.methods.OFFICIAL_DISCO_PER_GPU_BATCH). "mean": the batch mean, 1/32 of the official
    # weight. Only method.name=disco reads it.
    distill_reduction: Literal["mean", "sum"] = "sum"
    ssld_loss: Literal["symkl", "soft_ce"] = "symkl"  # SSLD: symmetric KL or soft-label CE
    kl_temperature: float = 1.0         # SSLD softmax temperature (paper: 1)
    loss_impl: Literal["auto", "torch", "triton"] = "auto"  # fastdisco.kernels dispatch


@dataclass
class OptimConfig:
    """Optimizer and schedule (fastdisco.engine.optim)."""

    name: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = 0.03                    # at base_batch; scaled linearly with the global batch
    base_batch: int = 256               # global batch = data.batch_size * world size * grad_accum
    momentum: float = 0.9               # SGD / LARS
    weight_decay: float = 1e-4
    # weight decay on norms and biases (ndim <= 1) too. "auto" = the method's published recipe
    # (RECIPE_DECAY_NORM_BIAS): mocov2 / disco true (the official MoCo / DisCo code decays every
    # parameter), ssld / supervised false (PaddleClas exempts the MobileNetV3 student's BatchNorms)
    decay_norm_bias: Literal["auto", True, False] = "auto"
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    lars_eta: float = 0.001             # LARS trust coefficient
    fused: bool = True                  # fused SGD/AdamW kernels where supported (else foreach)
    warmup_epochs: float = 0.0          # linear warm-up, then cosine
    min_lr_ratio: float = 0.0           # final lr = min_lr_ratio * lr
    grad_accum: int = 1                 # micro-batches (loader batches) per optimizer step
    clip_grad: float = 0.0              # max global grad norm; 0 = off


@dataclass
class TrainConfig:
    """The engine: length, precision, speed switches, logging and checkpointing."""

    out_dir: str = "runs/default"       # run directory; re-running with the same one resumes
    epochs: float = 200.0               # length in passes over the data ...
    max_steps: int = 0                  # ... unless > 0: length in optimizer steps (schedule too)
    stop_at: int = 0                    # > 0: stop (with a checkpoint) after this step, keeping the
                                        # schedule of the full run (for chunked jobs and tests)
    seed: int = 0
    precision: Literal["bf16", "fp32"] = "bf16"  # autocast dtype (CUDA and CPU); fp32 = off
    channels_last: bool = True
    compile: bool = True                # torch.compile the student, key encoder and teacher separately
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # torch.compile mode;
                                        # reduce-overhead = CUDA graphs (small per-GPU batches)
    deterministic: bool = False         # torch.use_deterministic_algorithms, no cudnn autotuning
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"  # under torchrun; auto = nccl on CUDA
    log_every: int = 20                 # host sync, metrics.jsonl / TensorBoard line, NaN check
    ckpt_every: int = 500               # optimizer steps between checkpoints (also at the end and on SIGTERM/SIGINT)
    keep_ckpts: int = 2                 # step_*.pt files kept (last.pt always)
    resume: bool = True                 # continue from out_dir/checkpoints/last.pt when present
    # resume even though optim / data / method / train values differ from the checkpoint's config
    # (the changes are printed); off: such a resume is refused. The student's architecture never changes
    allow_config_change: bool = False
    nan_policy: Literal["stop", "skip"] = "stop"  # non-finite loss: stop, or skip those steps
    tensorboard: bool = True
    progress: bool = True               # tqdm bar (rank 0)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- machinery
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _short(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters: an error line stays one short line whatever the input."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r)} characters)"


def coerce(value: Any, tp, key: str) -> Any:
    """Check `value` against the annotation `tp`; convert only where lossless (int -> float,
    list -> tuple). Raises UsageError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise UsageError(f"config key '{key}': {_short(value)} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else f"config key '{key}': bad value {_short(value)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"config key '{key}': expected a list, got {_short(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UsageError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, key) for v, a in zip(value, args))
        item = args[0] if args else Any
        seq = [coerce(v, item, key) for v in value] if item is not Any else list(value)
        return tuple(seq) if origin is tuple else seq
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(value, tp):
        return value
    raise UsageError(f"config key '{key}': expected {_type_name(tp)}, got {_short(value)}")


def apply_overrides(obj, overrides: dict, prefix: str = "") -> None:
    """Recursively set fields of dataclass `obj` from a nested dict."""
    if not isinstance(overrides, dict):
        raise UsageError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {_short(overrides)}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise UsageError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            apply_overrides(cur, v, key + ".")
        else:
            setattr(obj, k, coerce(v, hints[k], key))


_FLOAT_RE = r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"


def _strict_loader():
    """yaml.SafeLoader that refuses aliases (a 400-byte 'billion laughs' file would expand to
    gigabytes) and duplicate keys (the later one would win silently), and reads 1e-4 as a float
    (YAML 1.1 wants 1.0e-4)."""
    import re

    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise UsageError(f"YAML aliases are not allowed in fastdisco configs (alias *{event.anchor} at line "
                                 f"{event.start_mark.line + 1})")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise UsageError(f"duplicate config key '{key}' (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_FLOAT_RE), list("-+0123456789."))
    return StrictLoader


def _yaml_load(text: str):
    import yaml

    return yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader subclass)


def parse_set(item: str) -> dict:
    """'section.key=value' -> {'section': {'key': value}}, value parsed as YAML (1e-4, true, [1,2])."""
    import yaml

    if "=" not in item:
        raise UsageError(f"--set expects section.key=value, got {_short(item)}")
    dotted, raw = item.split("=", 1)
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = dotted.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {p}")
    try:
        data = _yaml_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UsageError as e:
        raise UsageError(f"config file {p}: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {p} must hold a mapping of sections")
    return data


def _ge(lo, note: str = "") -> tuple[Any, str]:
    return (lambda v: v >= lo), f">= {lo}" + (f" {note}" if note else "")


def _gt(lo) -> tuple[Any, str]:
    return (lambda v: v > lo), f"> {lo}"


def _within(lo, hi) -> tuple[Any, str]:
    return (lambda v: lo <= v <= hi), f"in [{lo}, {hi}]"


# every numeric field's valid range, in one place: "section.key" -> (test, what it must be)
RANGES: dict[str, tuple[Any, str]] = {
    "data.resolution": _ge(8),
    "data.batch_size": _ge(1),
    "data.num_workers": _ge(0),
    "data.dali_threads": _ge(0),
    "data.prefetch": _ge(0),
    "model.num_classes": _ge(1),
    "model.proj_hidden": _ge(1),
    "model.proj_dim": _ge(1),
    "model.teacher_proj_hidden": _ge(0),
    "model.shuffle_bn_group": _ge(0),
    "model.teacher_bn_group": _ge(0, "(0 = each view's whole batch)"),
    "method.temperature": _gt(0),
    "method.queue_size": _ge(1),
    "method.momentum": _within(0, 1),
    "method.distill_weight": _ge(0),
    "method.kl_temperature": _gt(0),
    "optim.lr": _gt(0),
    "optim.base_batch": _ge(1),
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.weight_decay": _ge(0),
    "optim.betas": (lambda v: all(0 <= b < 1 for b in v), "two values in [0, 1)"),
    "optim.lars_eta": _gt(0),
    "optim.warmup_epochs": _ge(0),
    "optim.min_lr_ratio": _within(0, 1),
    "optim.grad_accum": _ge(1),
    "optim.clip_grad": _ge(0, "(0 = off)"),
    "train.epochs": _ge(0),
    "train.max_steps": _ge(0, "(0 = use train.epochs)"),
    "train.stop_at": _ge(0, "(0 = off)"),
    "train.log_every": _ge(1),
    "train.ckpt_every": _ge(1),
    "train.keep_ckpts": _ge(1),
}


# optim.decay_norm_bias "auto": whether each method's published recipe decays norms and biases
RECIPE_DECAY_NORM_BIAS = {"mocov2": True, "disco": True, "ssld": False, "supervised": False}


def decay_norm_bias(cfg) -> bool:
    """optim.decay_norm_bias with "auto" resolved for cfg.method.name (RECIPE_DECAY_NORM_BIAS)."""
    value = cfg.optim.decay_norm_bias
    return value if isinstance(value, bool) else RECIPE_DECAY_NORM_BIAS.get(cfg.method.name, False)


def validate(cfg) -> None:
    """Every field within its range (RANGES), and the run has a length: one-line UsageError naming the key."""
    import math

    for key, (ok, what) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        bad_float = isinstance(value, float) and not math.isfinite(value)
        if bad_float or not ok(value):
            raise UsageError(f"config key '{key}': must be {what}, got {_short(value)}")
    if cfg.train.max_steps == 0 and cfg.train.epochs <= 0:
        raise UsageError(f"config key 'train.epochs': must be > 0 when train.max_steps is 0, got {cfg.train.epochs}")


def build_config(path: str | Path | None = None, sets: list[str] | None = None, cls=Config):
    """Defaults <- YAML recipe <- --set overrides, type-checked, range-checked (`validate`)."""
    cfg = cls()
    if path:
        apply_overrides(cfg, load_yaml(path))
    for item in sets or []:
        apply_overrides(cfg, parse_set(item))
    if cls is Config:
        validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    d = dataclasses.asdict(cfg)

    def plain(x):  # tuples -> lists so YAML/JSON stay simple
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(d)


def from_dict(d: dict, cls=Config):
    cfg = cls()
    apply_overrides(cfg, d)
    return cfg


def save_yaml(cfg, path: str | Path) -> None:
    import yaml

    from fastdisco.io import atomic_write

    with atomic_write(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


# --------------------------------------------------------------------------- documentation
def field_docs(cls) -> dict[str, str]:
    """Each field's meaning, read from the comments beside it in this file (a trailing comment,
    its continuation lines, or the comment block just above): the dataclasses are the one place
    a field is documented, and `fastdisco train --help` lists them from here."""
    import io
    import re
    import tokenize

    docs: dict[str, str] = {}
    pending: list[str] = []   # comment block above the next field
    last: str | None = None   # field whose trailing comment may continue on the next lines
    line_of_last = -1
    # the class's block of this file, found by text (inspect.getsource would ast.parse the whole file)
    text = Path(__file__).read_text()
    start = re.search(rf"^class {cls.__name__}\b.*$", text, re.M).start()
    end = re.search(r"^\S", text[start:].split("\n", 1)[1], re.M)
    block = text[start:] if end is None else text[start:start + len(text[start:].split("\n", 1)[0]) + 1 + end.start()]
    tokens = tokenize.generate_tokens(io.StringIO(block).readline)
    names = {f.name for f in dataclasses.fields(cls)}
    at_line_start = True
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if not at_line_start and last is not None and tok.start[0] == line_of_last:
                docs[last] = text                       # trailing comment of the field
            elif last is not None and tok.start[0] == line_of_last + 1 and tok.start[1] > 20:
                docs[last] += " " + text                 # an indented continuation of it
                line_of_last += 1
            else:
                pending.append(text)
                last = None
        elif tok.type == tokenize.NAME and at_line_start and tok.string in names and tok.start[1] == 4:
            last, line_of_last = tok.string, tok.start[0]
            if pending:
                docs[last] = " ".join(pending)
            pending = []
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            at_line_start = True
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            at_line_start = False
    return docs


def describe_fields(cls=Config) -> str:
    """`section.key = default  meaning` for every config field, section by section."""
    lines = []
    for sec in dataclasses.fields(cls):
        sub = sec.type if isinstance(sec.type, type) else type(getattr(cls(), sec.name))
        doc = (sub.__doc__ or "").strip().splitlines()[0] if sub.__doc__ else ""
        lines.append(f"{sec.name}:  {doc}")
        docs, hints = field_docs(sub), typing.get_type_hints(sub)
        for f in dataclasses.fields(sub):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            tp = hints[f.name]
            kind = "|".join(map(str, typing.get_args(tp))) if typing.get_origin(tp) is Literal else _type_name(tp)
            meaning = f"  # {docs[f.name]}" if f.name in docs else ""
            lines.append(f"  {sec.name}.{f.name}: {kind} = {default!r}{meaning}")
    return "\n".join(lines)
