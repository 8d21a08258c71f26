"""PaddleClas `ResNet50_vd` parameters (`.pdparams`) -> a timm `resnet50d` state dict.

SSLD's MobileNet students learn from PaddleClas's `ResNet50_vd_ssld` (82.4% top-1). Paddle stores
parameters as a pickle of `{name: numpy array}`; a pickle can run arbitrary code when loaded, so
it is read with `SafeUnpickler`, which rebuilds numpy arrays and plain containers and refuses
every other global (no code from the file ever runs).

Both naming schemes PaddleClas has published are read:
  static ("ParamAttr" names, PaddleClas 1.x / 2.0):   conv1_1_weights, bnv1_1_scale/_offset/_mean/
      _variance (stem conv1_1..conv1_3), res2a_branch2a_weights, bn2a_branch2a_scale, ...,
      res2a_branch1_weights (shortcut), fc_0.w_0 / fc_0.b_0
  structured (legendary models, PaddleClas >= 2.1):   stem.0.conv.weight, stem.0.bn.weight/bias/
      _mean/_variance, blocks.0.conv0.conv.weight, blocks.0.short.conv.weight, fc.weight / fc.bias
Paddle's BatchNorm scale / offset / mean / variance are torch's weight / bias / running_mean /
running_var; a Paddle Linear weight is [in, out], the transpose of torch's. The architectures
match layer for layer (deep 3-conv stem 32-32-64, average-pool shortcut downsampling, stride on
the 3x3 conv), so every timm key must receive exactly one Paddle array of its shape.
"""
from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np

from fastdisco.errors import FastdiscoError

DEPTHS = {"resnet50d": (3, 4, 6, 3)}  # timm name -> blocks per stage (PaddleClas ResNet50_vd)
_BN = {"scale": "weight", "offset": "bias", "mean": "running_mean", "variance": "running_var"}
_BN_STRUCT = {"weight": "weight", "bias": "bias", "_mean": "running_mean", "_variance": "running_var"}


# --------------------------------------------------------------------------- reading
class SafeUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, numpy scalars and plain containers; any other global is refused
    before it is called (a pickle's only way to run code is to name a callable global)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol-2 pickles store numpy's raw bytes as encode(str, 'latin1')
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed (only numpy arrays are read)")


def read_pdparams(path: str | Path) -> dict[str, np.ndarray]:
    """`{name: array}` of a Paddle parameter file, read without executing code."""
    p = Path(path)
    if not p.is_file():
        raise FastdiscoError(f"Paddle parameter file not found: {p}")
    try:
        obj = SafeUnpickler(io.BytesIO(p.read_bytes()), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise FastdiscoError(f"refusing to read {p}: {e}") from None
    except Exception as e:  # truncated or foreign file: many exception types
        raise FastdiscoError(f"cannot read {p} as a Paddle parameter file (a pickle of numpy arrays): "
                             f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(obj, dict):
        raise FastdiscoError(f"{p} holds a {type(obj).__name__}, not a dict of parameters")
    # paddle.save adds a name table (`StructuredToParameterName@@`, strings): not a parameter
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}


# --------------------------------------------------------------------------- names
def _stage_blocks(depths) -> list[tuple[int, int]]:
    """(stage 0..3, block within the stage) for every residual block, in order."""
    return [(s, j) for s, n in enumerate(depths) for j in range(n)]


def static_names(depths=DEPTHS["resnet50d"]) -> dict[str, str]:
    """Paddle static (ParamAttr) name -> timm key, for every parameter and BN statistic."""
    out: dict[str, str] = {}

    def conv_bn(paddle_conv: str, timm_conv: str, timm_bn: str) -> None:
        out[f"{paddle_conv}_weights"] = f"{timm_conv}.weight"
        bn = "bn" + paddle_conv[3:]  # PaddleClas: bn_name = "bn" + name[3:] (conv1_1 -> bnv1_1)
        for suffix, t in _BN.items():
            out[f"{bn}_{suffix}"] = f"{timm_bn}.{t}"

    conv_bn("conv1_1", "conv1.0", "conv1.1")
    conv_bn("conv1_2", "conv1.3", "conv1.4")
    conv_bn("conv1_3", "conv1.6", "bn1")
    for s, j in _stage_blocks(depths):
        name = f"res{s + 2}{chr(97 + j)}"  # res2a, res2b, ..., res5c (ResNet-50 naming)
        t = f"layer{s + 1}.{j}"
        for branch, k in (("2a", 1), ("2b", 2), ("2c", 3)):
            conv_bn(f"{name}_branch{branch}", f"{t}.conv{k}", f"{t}.bn{k}")
        if j == 0:
            conv_bn(f"{name}_branch1", f"{t}.downsample.1", f"{t}.downsample.2")
    out["fc_0.w_0"], out["fc_0.b_0"] = "fc.weight", "fc.bias"
    return out


def structured_names(depths=DEPTHS["resnet50d"]) -> dict[str, str]:
    """Paddle legendary-model (structured) name -> timm key."""
    out: dict[str, str] = {}

    def conv_bn(paddle_layer: str, timm_conv: str, timm_bn: str) -> None:
        out[f"{paddle_layer}.conv.weight"] = f"{timm_conv}.weight"
        for suffix, t in _BN_STRUCT.items():
            out[f"{paddle_layer}.bn.{suffix}"] = f"{timm_bn}.{t}"

    for i, (conv, bn) in enumerate((("conv1.0", "conv1.1"), ("conv1.3", "conv1.4"), ("conv1.6", "bn1"))):
        conv_bn(f"stem.{i}", conv, bn)
    for b, (s, j) in enumerate(_stage_blocks(depths)):
        t = f"layer{s + 1}.{j}"
        for k in range(3):
            conv_bn(f"blocks.{b}.conv{k}", f"{t}.conv{k + 1}", f"{t}.bn{k + 1}")
        if j == 0:
            conv_bn(f"blocks.{b}.short", f"{t}.downsample.1", f"{t}.downsample.2")
    out["fc.weight"], out["fc.bias"] = "fc.weight", "fc.bias"
    return out


def _scheme(names: list[str]) -> tuple[str, dict[str, str]]:
    if any(n.startswith(("stem.", "blocks.")) for n in names):
        return "structured", structured_names()
    if any(re.match(r"(conv1_1|res2a)_", n) for n in names):
        return "static", static_names()
    shown = ", ".join(sorted(names)[:5]) or "none"
    raise FastdiscoError(f"not a PaddleClas ResNet50_vd parameter file: names neither static (conv1_1_weights, "
                         f"res2a_branch2a_weights, ...) nor structured (stem.0.conv.weight, ...); first names: {shown}")


# --------------------------------------------------------------------------- conversion
def paddle_to_timm(params: dict[str, np.ndarray], model: str = "resnet50d") -> dict:
    """Map a Paddle ResNet50_vd parameter dict onto timm `model`'s state dict (torch tensors),
    checking every name and shape against the timm model; one-line errors name the keys."""
    import timm
    import torch

    if model not in DEPTHS:
        raise FastdiscoError(f"Paddle conversion supports {', '.join(DEPTHS)}, not '{model}'")
    scheme, table = _scheme(list(params))
    own = timm.create_model(model, pretrained=False, device="meta").state_dict()  # names, shapes, dtypes only
    out, unknown = {}, []
    for name, arr in params.items():
        key = table.get(name)
        if key is None:
            unknown.append(name)
            continue
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if key == "fc.weight":
            t = t.t().contiguous()  # Paddle Linear: [in, out]
        out[key] = t.to(own[key].dtype) if t.is_floating_point() else t
    missing = sorted(k for k in own if k not in out and not k.endswith("num_batches_tracked"))
    shapes = [f"{k} {tuple(out[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(out)
              if tuple(out[k].shape) != tuple(own[k].shape)]
    if unknown or missing or shapes:
        inverse = {v: k for k, v in table.items()}
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} Paddle names with no timm key: {', '.join(sorted(unknown)[:5])}")
        if missing:
            parts.append(f"{len(missing)} timm keys with no Paddle array: "
                         + ", ".join(f"{k} (Paddle {inverse.get(k, '?')})" for k in missing[:5]))
        if shapes:
            parts.append(f"{len(shapes)} arrays of the wrong shape (after mapping, file vs {model}): "
                         + "; ".join(shapes[:4]))
        raise FastdiscoError(f"the Paddle file ({scheme} names) does not fit timm {model}: {'; '.join(parts)}")
    for k in own:  # BN counters Paddle does not keep
        if k not in out:
            out[k] = torch.zeros((), dtype=torch.long)
    return {k: out[k] for k in own}


def convert_file(src: str | Path, dst: str | Path, model: str = "resnet50d") -> dict:
    """Read `src` (.pdparams) safely, convert, and write `dst` (.safetensors, or a torch file of
    the plain state dict) atomically; returns a summary."""
    params = read_pdparams(src)
    sd = paddle_to_timm(params, model)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        from fastdisco.io import temp_path

        tmp = temp_path(dst)
        try:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata={"format": "pt"})
            tmp.replace(dst)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        from fastdisco.io import atomic_torch_save

        atomic_torch_save(sd, dst)
    return {"model": model, "scheme": _scheme(list(params))[0], "arrays": len(params), "keys": len(sd),
            "num_classes": int(sd["fc.weight"].shape[0]), "out": str(dst)}
