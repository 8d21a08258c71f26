"""`model.init_ckpt`: start a student from given weights, not from a random init.

Used for stages that continue from an earlier run with a fresh optimizer and schedule (SSLD's
final ImageNet-1k-only stage, a fine-tune after distillation). Only weights are taken: the
optimizer state, the schedule position, the step count, the key encoder and the queue all start
fresh (the key encoder is copied from the initialised student, as at any start).

Accepted files (read with weights_only=True, never executing code):
  - a fastdisco run checkpoint, or a run directory (its checkpoints/last.pt): its `student`
    state (`backbone.*` + `head.*`);
  - an exported backbone (`fastdisco export`): `OUT.safetensors`, or the folder `OUT/` holding
    `model.safetensors`: timm keys of the backbone alone.

Matching is strict for the backbone: every key the student's backbone has must be in the file
with the same shape, and the file may hold no other backbone key. The projection head (`head.*`,
mocov2 / disco students only) is loaded when both the file and the student have one (strictly
too); a file without a head leaves the student's freshly initialised head, and a head in the file
that the student does not have (an SSLD / supervised student) is left out: the head is a
training-time part that a deployed backbone never uses.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastdisco.errors import FastdiscoError

CKPT_FORMAT = "fastdisco-ckpt-v1"  # = fastdisco.engine.checkpoint.FORMAT (models cannot import engine)


def resolve_init_path(path: str | Path) -> Path:
    """A file is itself; a run directory means checkpoints/last.pt; an export folder model.safetensors."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "last.pt", p / "model.safetensors"):
            if cand.is_file():
                return cand
        raise FastdiscoError(f"model.init_ckpt: {p} is a directory without checkpoints/last.pt or "
                             "model.safetensors (give a run directory, an export folder or a weights file)")
    if not p.is_file():
        raise FastdiscoError(f"model.init_ckpt: file not found: {p}")
    return p


def read_init_state(path: str | Path) -> tuple[dict, dict, str]:
    """(backbone state, head state, what the file is) from a run checkpoint or an exported backbone."""
    p = resolve_init_path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own types for corrupt headers
            raise FastdiscoError(f"model.init_ckpt: cannot read safetensors file {p}: {str(e).splitlines()[0]}") from None
        return _plain(sd), {}, "exported backbone"
    from fastdisco.io import safe_torch_load

    obj = safe_torch_load(p)
    if not (isinstance(obj, dict) and obj.get("format") == CKPT_FORMAT and isinstance(obj.get("student"), dict)):
        raise FastdiscoError(f"model.init_ckpt: {p} is neither a fastdisco run checkpoint ({CKPT_FORMAT}) nor an "
                             "exported .safetensors backbone")
    student = _plain(obj["student"])
    backbone = {k[len("backbone."):]: v for k, v in student.items() if k.startswith("backbone.")}
    head = {k[len("head."):]: v for k, v in student.items() if k.startswith("head.")}
    other = sorted(k for k in student if not k.startswith(("backbone.", "head.")))
    if other or not backbone:
        raise FastdiscoError(f"model.init_ckpt: the student state in {p} is not backbone.* + head.* "
                             f"(other keys: {other[:5]})")
    return backbone, head, f"run checkpoint (step {obj.get('step')}, student {obj.get('student_name', '?')})"


def _plain(sd: dict) -> dict:
    """Drop wrapper prefixes (DDP `module.`, torch.compile `_orig_mod.`)."""
    return {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in sd.items()
            if isinstance(v, torch.Tensor)}


@torch.no_grad()
def init_student(student: nn.Module, path: str | Path) -> str:
    """Load `path` into `student` (a fastdisco.models.student.Student) per the module docstring;
    returns a one-line description of what was loaded."""
    from fastdisco.models.teacher import _strict_load as strict_load  # the one strict, readable loader

    backbone, head, what = read_init_state(path)
    where = f"model.init_ckpt {path} ({what}) for the student's backbone"
    strict_load(student.backbone, backbone, where)
    student_head = getattr(student, "head", None)
    has_head = isinstance(student_head, nn.Module) and len(student_head.state_dict()) > 0
    note = "backbone"
    if head and has_head:
        strict_load(student_head, head, f"model.init_ckpt {path} ({what}) for the student's projection head")
        note = "backbone + projection head"
    elif has_head:
        note = "backbone (the file has no projection head: the student's head starts fresh)"
    elif head:
        note = "backbone (the file's projection head is left out: this student has none)"
    return f"initialised the student's {note} from {path} ({what})"
