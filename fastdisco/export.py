"""`fastdisco export CKPT OUT`: the deployable student -- its timm backbone only.

DisCo's point is "no extra parameters at deployment": the projection head, momentum encoder,
queue and teacher stay behind. OUT is a `.safetensors` file of the timm model's own state dict,
so timm loads it with strict keys and without any network access (a local `file` in the
pretrained cfg is the highest-priority source after an in-memory state dict):

    timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=OUT, num_classes=K))

K is the exported classifier size (0 for DisCo / MoCo students, which have none). It must be in
the overlay, not a `num_classes=` keyword: timm drops the classifier keys and loads non-strictly
whenever the requested num_classes differs from the pretrained cfg's (1000 by default), and
without it a headless backbone fails with missing `fc.*` keys. Both are written into the sidecar
OUT.json (model, num_classes, input size, mean/std, source checkpoint, provenance).

After writing, the export is checked: timm loads OUT with exactly that call and gives the same
outputs as the checkpoint's backbone. `--onnx OUT.onnx` also writes an ONNX graph and checks it
against PyTorch (needs the `onnx` extra: pip install 'fastdisco[onnx]').
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from fastdisco.errors import FastdiscoError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="fastdisco checkpoint (.pt) or run directory (uses checkpoints/last.pt)")
    p.add_argument("out", help="output .safetensors file (a sidecar OUT.json is written next to it)")
    p.add_argument("--onnx", metavar="OUT.onnx", default=None, help="also export ONNX and check it against PyTorch")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size recorded in the sidecar and used for checks (default: the run's data.resolution)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--atol", type=float, default=1e-4, help="tolerance of the ONNX-vs-PyTorch check")
    p.add_argument("--no-verify", action="store_true", help="skip the timm reload check")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise FastdiscoError(f"OUT must end in .safetensors, got {out}")
    info = export_backbone(args.ckpt, out, resolution=args.resolution, verify=not args.no_verify)
    print(f"wrote {out} ({info['num_params']:,} parameters, {info['model']}, num_classes={info['num_classes']}) "
          f"and {out.with_suffix('.json')}")
    print(f"load with: {info['load']}")
    if args.onnx:
        err = export_onnx(out, args.onnx, opset=args.opset, atol=args.atol)
        print(f"wrote {args.onnx} (max |onnx - torch| = {err:.2e})")
    return 0


def load_call(name: str, out: str | Path, num_classes: int) -> str:
    """The exact Python call that loads the export strictly."""
    return (f"timm.create_model({name!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(out)!r}, num_classes={num_classes}))")


def timm_load(name: str, out: str | Path, num_classes: int):
    """Load an export through timm's pretrained path (strict keys, local file only)."""
    import timm

    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out), num_classes=num_classes))


def export_backbone(ckpt_path: str | Path, out: str | Path, *, resolution: int | None = None,
                    verify: bool = True) -> dict:
    """Write the student backbone of a fastdisco checkpoint as safetensors + sidecar JSON.
    Returns the sidecar dict."""
    import safetensors.torch
    import torch

    from fastdisco import provenance
    from fastdisco.evaluation.backbone import (backbone_state_dict, build_timm, load_checkpoint,
                                               resolve_checkpoint, sidecar_path)
    from fastdisco.io import atomic_write, write_json

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
    meta = {"format": "fastdisco-backbone-v1", "model": name, "num_classes": str(num_classes)}
    out = Path(out)
    with atomic_write(out, "wb") as f:
        f.write(safetensors.torch.save(tensors, metadata=meta))
    side = {
        "format": "fastdisco-backbone-v1",
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
        "provenance": provenance.collect(),
    }
    if verify:
        reloaded = timm_load(name, out, num_classes).eval()
        x = torch.randn(2, 3, min(res, 64), min(res, 64), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (reloaded(x) - model(x)).abs().max().item()
        if diff != 0.0:
            raise FastdiscoError(f"export check failed: timm reload of {out} differs from the checkpoint by {diff:.3g}")
        side["verified"] = "timm reload gives identical outputs"
    write_json(sidecar_path(out), side)
    side["load"] = load_call(name, out, num_classes)  # full path for the console message
    return side


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_onnx(weights: str | Path, onnx_out: str | Path, *, opset: int = 17, atol: float = 1e-4) -> float:
    """Export the backbone in `weights` (an export with its sidecar) to ONNX, check it against
    PyTorch on a random batch, and return the max absolute difference."""
    import json

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
