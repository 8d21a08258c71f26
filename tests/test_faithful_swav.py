"""SwAV ResNet-50w2 as a teacher (issue 15 item 6): the timm-registered `resnet50w2` has the
published checkpoint's layout, so a SwAV checkpoint (DDP `module.` prefix, 8192-wide projection
head, prototypes) loads with strict keys."""
from __future__ import annotations

import pytest
import torch

import fastdisco.models  # noqa: F401  (registers resnet50w2 / resnet50w4 with timm)


def swav_rn50w2_shapes(widen: int = 2) -> dict[str, tuple]:
    """Key -> shape of a SwAV RN50w`widen` backbone, written out from the layout of the published
    file (conv1 3 -> 64w; layer k: planes 64w*2^k, bottleneck width = planes, output 4*planes;
    swav issue #49: layer1.0.conv1.weight is [128, 128, 1, 1] in swav_RN50w2_400ep_pretrain)."""
    out: dict[str, tuple] = {}

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.{p}"] = (c,)
        out[f"{name}.num_batches_tracked"] = ()

    stem = 64 * widen
    out["conv1.weight"] = (stem, 3, 7, 7)
    bn("bn1", stem)
    cin = stem
    for k, n in enumerate((3, 4, 6, 3)):
        planes = stem * 2 ** k
        for b in range(n):
            p = f"layer{k + 1}.{b}"
            src = cin if b == 0 else planes * 4
            out[f"{p}.conv1.weight"] = (planes, src, 1, 1)
            bn(f"{p}.bn1", planes)
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                out[f"{p}.downsample.0.weight"] = (planes * 4, src, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
        cin = planes * 4
    return out


def test_resnet50w2_has_the_published_layout():
    import timm

    m = timm.create_model("resnet50w2", pretrained=False, num_classes=0, device="meta")
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == swav_rn50w2_shapes(2)
    assert got["layer1.0.conv1.weight"] == (128, 128, 1, 1) and m.num_features == 4096
    assert round(sum(p.numel() for p in m.parameters()) / 1e6) == 94  # the SwAV paper's 94M
    wide = timm.create_model("wide_resnet50_2", pretrained=False, num_classes=0, device="meta")
    assert wide.conv1.out_channels == 64 and wide.num_features == 2048  # not SwAV's network
    m4 = timm.create_model("resnet50w4", pretrained=False, num_classes=0, device="meta")
    assert {k: tuple(v.shape) for k, v in m4.state_dict().items()} == swav_rn50w2_shapes(4)


@pytest.mark.slow
def test_swav_rn50w2_checkpoint_loads_strictly_as_teacher(tmp_path):
    from fastdisco.config import ModelConfig
    from fastdisco.models.teacher import load_teacher

    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in swav_rn50w2_shapes(2).items():  # swav's key names, DDP prefix, fp16 to keep the file small
        v = torch.zeros(shape, dtype=torch.long) if k.endswith("num_batches_tracked") else \
            torch.full(shape, 1.0 if k.endswith(("running_var", "bn1.weight")) else 0.01, dtype=torch.half)
        sd[f"module.{k}"] = v
    head = {"projection_head.0.weight": (8192, 4096), "projection_head.0.bias": (8192,),
            "projection_head.1.weight": (8192,), "projection_head.1.bias": (8192,),
            "projection_head.1.running_mean": (8192,), "projection_head.1.running_var": (8192,),
            "projection_head.3.weight": (128, 8192), "projection_head.3.bias": (128,),
            "prototypes.weight": (3000, 128)}
    for k, shape in head.items():
        sd[f"module.{k}"] = torch.rand(shape, generator=g).half()
    sd["module.projection_head.1.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    want_head = sd["module.projection_head.3.weight"].float()
    path = tmp_path / "swav_RN50w2_400ep_pretrain.pth.tar"
    torch.save(sd, path)
    del sd
    cfg = ModelConfig(teacher="resnet50w2", teacher_ckpt=str(path), teacher_format="auto", teacher_bn="eval",
                      teacher_proj_hidden=8192)
    teacher = load_teacher(cfg, output="embedding")
    assert teacher.format == "swav" and teacher.backbone.num_features == 4096
    assert [m.out_features for m in teacher.head if isinstance(m, torch.nn.Linear)] == [8192, 128]
    assert torch.equal(teacher.head[3].weight, want_head)  # the head came from the file
    assert teacher(torch.randn(2, 3, 64, 64)).shape == (2, 128)
