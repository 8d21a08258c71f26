"""Folding eval-mode BatchNorm into the convolution before it, for a frozen teacher run with
`model.teacher_bn: eval`: y = BN(conv(x)) becomes one conv with scaled weights and a bias, so the
teacher's forward skips every BN pass (torch.nn.utils.fusion.fuse_conv_bn_eval, per pair).

Pairs are found by running a probe batch through the model: a BatchNorm2d is folded into a
Conv2d when its input is that conv's output tensor and both run exactly once. A conv output read
by anything besides its BN would make the fold wrong, which no hook can see, so the folded model
must reproduce the unfolded one's output on the probe; otherwise the model is left unfolded.
"""
from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger("fastdisco.models.fold_bn")


def conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where the BN reads exactly the conv's output, both called once."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    calls: Counter = Counter()
    found: list[tuple[str, str]] = []
    handles = []

    def conv_hook(name):
        def hook(_mod, _inp, out):
            calls[name] += 1
            outputs[id(out)] = (name, out)  # the tensor is kept: its id cannot be reused meanwhile
        return hook

    def bn_hook(name):
        def hook(_mod, inp):
            calls[name] += 1
            hit = outputs.get(id(inp[0]))
            if hit is not None and hit[1] is inp[0]:
                found.append((hit[0], name))
        return hook

    for name, m in model.named_modules():
        if type(m) is nn.Conv2d:
            handles.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    convs = Counter(c for c, _ in found)
    return [(c, b) for c, b in found if calls[c] == 1 and calls[b] == 1 and convs[c] == 1]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def fold_conv_bn(model: nn.Module, probe: torch.Tensor, rtol: float = 1e-3) -> tuple[nn.Module, int]:
    """(model with every foldable conv->BN pair folded, number of pairs folded). `model` must be in
    eval mode; it is not modified (a folded copy is returned, or `model` itself when nothing folds
    or the folded copy does not reproduce its output on `probe` within rtol of its largest value)."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model, 0
    try:
        pairs = conv_bn_pairs(model, probe)
    except Exception as e:  # a probe the model does not take (fixed input size): keep it unfolded
        log.info("BN folding skipped: the probe batch %s does not run (%s)", tuple(probe.shape), e)
        return model, 0
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        bn = folded.get_submodule(bn_name)
        _replace(folded, conv_name, fuse_conv_bn_eval(folded.get_submodule(conv_name), bn))
        # timm's BatchNormAct2d: BN, then drop and activation, which stay
        after = nn.Sequential(bn.drop, bn.act) if hasattr(bn, "act") and hasattr(bn, "drop") else nn.Identity()
        _replace(folded, bn_name, after)
    with torch.no_grad():
        want, got = model(probe), folded(probe)
    if not torch.allclose(got, want, rtol=0, atol=rtol * float(want.abs().max()) + 1e-6):
        log.warning("BN folding skipped: the folded model differs from the unfolded one on a probe batch "
                    "(a conv output is read by more than its BN)")
        return model, 0
    return folded, len(pairs)
