"""SwAV's wide ResNet-50s (facebookresearch/swav), registered with timm as `resnet50w2` /
`resnet50w4`, so a SwAV checkpoint (DisCo's strongest teacher: `swav_RN50w2_400ep_pretrain.pth.tar`)
loads with strict keys.

The layout is the published checkpoints' (ResNet-50 with every width multiplied by w):
  conv1        7x7 stride 2, 3 -> 64w channels, then BN, ReLU, 3x3 max-pool (SwAV pads by 1 in a
               separate layer and 2 in the conv: the same as padding 3)
  layer k      planes 64w * 2^k (k = 0..3), bottleneck width = planes, output 4 x planes;
               the first block's shortcut is a 1x1 (strided) conv + BN (torchvision layout)
  features     2048w after global average pooling (4096 for w = 2)
so RN50w2 has 94M backbone parameters, as the SwAV paper states. swav's `src/resnet50.py` also
doubles `base_width` (a bottleneck twice as wide again); its own checkpoints do not fit that
(`layer1.0.conv1.weight` is [128, 128, 1, 1] in the RN50w2 file, swav issue #49), and fastdisco
follows the files. timm's `wide_resnet50_2` is a third network (64-channel stem, 2048 features).

The parameter names are torchvision's, which timm's ResNet shares (conv1, bn1, layerK.N.convI /
bnI, downsample.0 / .1), so a SwAV state dict maps key for key; its projection head
(`projection_head`: Linear(2048w, 8192) - BN - ReLU - Linear(8192, 128) for RN50w2) and its
prototypes (dropped) are read by fastdisco.models.teacher_formats (format `swav`).

Importing fastdisco.models registers these names (models/__init__.py).
"""
from __future__ import annotations

from timm.models import register_model
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

SWAV_WIDTHS = {"resnet50w2": 2, "resnet50w4": 4}


def swav_resnet50(widen: int, **kwargs) -> ResNet:
    """SwAV's `resnet50w{widen}` as a timm ResNet (see the module docstring)."""
    for factory_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm.create_model's:
        kwargs.pop(factory_only, None)  # weights are never downloaded, checkpoints are local files
    stem = 64 * widen
    model = ResNet(Bottleneck, (3, 4, 6, 3), channels=(stem, stem * 2, stem * 4, stem * 8), **kwargs)
    # timm's plain stem is always 64 channels wide: widen it, and the two convs that read it
    dev = model.conv1.weight.device
    first = model.layer1[0]
    model.conv1 = nn.Conv2d(model.conv1.in_channels, stem, 7, stride=2, padding=3, bias=False, device=dev)
    model.bn1 = type(model.bn1)(stem, device=dev)
    first.conv1 = nn.Conv2d(stem, first.conv1.out_channels, 1, bias=False, device=dev)
    first.downsample[0] = nn.Conv2d(stem, first.downsample[0].out_channels, 1, bias=False, device=dev)
    for conv in (model.conv1, first.conv1, first.downsample[0]):
        if not conv.weight.is_meta:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # timm's conv init
    model.feature_info[0]["num_chs"] = stem
    model.pretrained_cfg = {"architecture": f"resnet50w{widen}", "num_classes": model.num_classes,
                            "input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406),
                            "std": (0.229, 0.224, 0.225), "classifier": "fc", "first_conv": "conv1"}
    return model


@register_model
def resnet50w2(pretrained: bool = False, **kwargs) -> ResNet:
    """SwAV ResNet-50w2: 128-channel stem, 4096 features, 94M parameters."""
    return swav_resnet50(2, **kwargs)


@register_model
def resnet50w4(pretrained: bool = False, **kwargs) -> ResNet:
    """SwAV ResNet-50w4: 256-channel stem, 8192 features, 375M parameters."""
    return swav_resnet50(4, **kwargs)
