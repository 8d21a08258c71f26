"""The student (timm backbone + projection head), MoCo's momentum key encoder and key queue, and
the BatchNorm treatments that stop positive pairs from sharing BN statistics.

BN leakage: if the query and key encoders normalise view 1 and view 2 of the *same* images with
statistics of the *same* batch, the contrastive task can be solved through those statistics.
MoCo shuffles the key batch across GPUs ("shuffle-BN"). On one device we emulate it with
`GroupedBatchNorm2d` (statistics per group of `shuffle_bn_group` samples) and a shuffled key
batch, so the key of sample i is normalised with a different set of images than its query.
Across ranks the key batch is shuffled globally, as MoCo does (`shuffled_forward`); `sync_bn`
(SyncBatchNorm) is the alternative (docs/design.md section 3).
"""
from __future__ import annotations

import copy

import fastdisco._compat  # noqa: F401  (torchvision import fix before timm, where the install did not apply it)
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdisco.distributed import all_gather_cat, batch_shuffle, batch_unshuffle, shared_randperm, world_size
from fastdisco.models.grouped_bn import GroupedBatchNorm2d, convert_grouped_bn  # noqa: F401  (grouped BN lives there)


# --------------------------------------------------------------------------- student
class Student(nn.Module):
    """`forward(x) = head(backbone(x))`. For mocov2/disco the backbone is a timm model with
    `num_classes=0` (pooled features) and the head `Linear-ReLU-Linear` (keys head.0 / head.2);
    for ssld the backbone keeps its classifier and the head is the identity."""

    def __init__(self, name: str, head_hidden: int = 2048, head_dim: int = 128, num_classes: int = 0,
                 stem: str = "default"):
        super().__init__()
        import timm

        from fastdisco.errors import FastdiscoError

        try:
            self.backbone = timm.create_model(name, pretrained=False, num_classes=num_classes)
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise FastdiscoError(f"config key 'model.student': {e}") from None
        set_stem(self.backbone, stem, f"model.student '{name}'")
        if num_classes > 0:
            self.head: nn.Module = nn.Identity()
        else:
            d = self.backbone.num_features
            self.head = nn.Sequential(nn.Linear(d, head_hidden), nn.ReLU(inplace=True), nn.Linear(head_hidden, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


CLASSIFIER_METHODS = ("ssld", "supervised")  # students that keep their timm classifier (no head)


def build_student(model_cfg, method_name: str) -> Student:
    """Student per docs/design.md section 3, with shuffle-BN emulation or SyncBN as configured."""
    classifier = method_name in CLASSIFIER_METHODS
    num_classes = model_cfg.num_classes if classifier else 0
    student = Student(model_cfg.student, model_cfg.proj_hidden, model_cfg.proj_dim, num_classes,
                      getattr(model_cfg, "stem", "default"))
    if model_cfg.sync_bn:
        from timm.layers import convert_sync_batchnorm

        student = convert_sync_batchnorm(student)
    elif model_cfg.shuffle_bn_group > 0 and not classifier:
        convert_grouped_bn(student, model_cfg.shuffle_bn_group)
    return student


# --------------------------------------------------------------------------- small-image stem
STEMS = ("default", "small")


def set_stem(model: nn.Module, stem: str, where: str = "model") -> nn.Module:
    """`stem="small"`: turn a timm ResNet-family stem into the small-image stem of the MoCo CIFAR
    demo / solo-learn (3x3 stride-1 first conv, no max-pool), in place, so a 32 px input keeps a
    32x32 map into layer1 instead of 8x8 (ImageNet stem: 7x7/2 conv + 3x3/2 max-pool).
    Plain stem (resnet18/50): conv1 becomes a new 3x3/1 conv with the same channels (weights
    re-initialised as timm does: kaiming normal, fan_out). Deep / tiered stem (resnet10t, *d
    models: conv1 = Sequential of 3x3 convs, the first with stride 2): that first conv gets
    stride 1, weights kept. Both: maxpool -> Identity. "default" leaves the model untouched.
    Any other model is a FastdiscoError: silently keeping an ImageNet stem would hide the change."""
    from fastdisco.errors import FastdiscoError

    if stem not in STEMS:
        raise FastdiscoError(f"{where}: unknown stem '{stem}' (known: {', '.join(STEMS)})")
    if stem == "default":
        return model
    conv1, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    first = conv1[0] if isinstance(conv1, nn.Sequential) and len(conv1) else conv1
    if not isinstance(first, nn.Conv2d) or not isinstance(pool, (nn.MaxPool2d, nn.Identity)) \
            or first.in_channels != 3:
        raise FastdiscoError(f"{where}: model.stem 'small' only converts timm ResNet-family models "
                             f"(conv1 + maxpool stem); {type(model).__name__} has no such stem")
    if isinstance(conv1, nn.Sequential):  # deep stem: keep its 3x3 convs, drop the first stride
        if first.kernel_size != (3, 3):
            raise FastdiscoError(f"{where}: deep stem's first conv is {first.kernel_size}, expected 3x3")
        first.stride = (1, 1)
    else:
        new = nn.Conv2d(3, first.out_channels, 3, 1, 1, bias=first.bias is not None)
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = new
    model.maxpool = nn.Identity()
    return model


# --------------------------------------------------------------------------- momentum encoder
def make_key_encoder(student: nn.Module) -> nn.Module:
    """A frozen copy of the query encoder, updated only by EMA (MoCo)."""
    key = copy.deepcopy(student)
    for p in key.parameters():
        p.requires_grad_(False)
    return key


@torch.no_grad()
def ema_update(key: nn.Module, query: nn.Module, momentum: float) -> None:
    """key <- m * key + (1 - m) * query, parameters only (BN buffers are the key encoder's own,
    as in MoCo). One foreach kernel per dtype/device group."""
    kp = list(key.parameters())
    qp = [p.detach() for p in query.parameters()]
    torch._foreach_lerp_(kp, qp, 1.0 - momentum)


@torch.no_grad()
def shuffled_forward(encoder, x: torch.Tensor, generator: torch.Generator | None = None,
                     perm: torch.Tensor | None = None) -> torch.Tensor:
    """Run `encoder` on a randomly permuted batch and undo the permutation, so that (with BN) the
    key of sample i is normalised with other images than its query. On one device: the batch is
    permuted and grouped BN gives each group its own statistics. Across ranks (MoCo's
    `_batch_shuffle_ddp`): the batch is all-gathered, permuted globally and each rank encodes its
    slice, then the outputs are gathered back and this rank keeps its own rows, in order.
    The permutation of the global batch is drawn from `generator` (on x's device; rank 0's, shared
    by broadcast) when given, else from the global RNG: training passes the method's own
    generator, so no other draw can shift it. `perm` gives the permutation instead (tests)."""
    if perm is None:
        perm = shared_randperm(x.shape[0] * world_size(), x.device, generator)
    return batch_unshuffle(encoder(batch_shuffle(x, perm)), perm)


def check_shuffle_bn_batch(n: int, group_size: int, world: int) -> None:
    """Refuse (UsageError) a key batch on which shuffle-BN would silently do nothing: on one
    device it must hold at least 2 groups of `group_size` (else grouped BN is plain BN over the
    query's own batch); across ranks each rank's batch must be whole groups (one group per rank
    is MoCo's layout)."""
    from fastdisco.errors import UsageError

    if n % group_size == 0 and (world > 1 or n >= 2 * group_size):
        return
    need = (f"a multiple of {group_size} per rank" if world > 1
            else f"at least 2 groups of {group_size} on one device (a multiple of {group_size}, {2 * group_size}+)")
    alt = "model.sync_bn=true" if world > 1 else "model.shuffle_bn_group=0 (no shuffle-BN)"
    raise UsageError(f"config key 'model.shuffle_bn_group': shuffle-BN needs a key batch of {need}, but it has "
                     f"{n} images, so keys would share BatchNorm statistics with their queries: set "
                     f"data.batch_size or model.shuffle_bn_group to fit, or {alt}")


# --------------------------------------------------------------------------- queue
class KeyQueue(nn.Module):
    """MoCo's ring buffer of L2-normalised keys, [K, D] fp32. Keys are all-gathered across ranks
    before being enqueued, so every rank holds the same queue. The write pointer lives on the
    device: enqueueing never syncs with the host and any K works (no K % batch requirement)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def snapshot(self) -> torch.Tensor:
        """A copy for the loss: the buffer is overwritten in place right after."""
        return self.keys.clone()

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        # nan_to_num: a skipped non-finite step (train.nan_policy=skip) must not poison the queue.
        k = F.normalize(torch.nan_to_num(all_gather_cat(k.detach()).float(), 0.0, 0.0, 0.0), dim=1)
        idx = (self.ptr + torch.arange(k.shape[0], device=k.device)) % self.keys.shape[0]
        self.keys.index_copy_(0, idx, k)
        self.ptr.copy_((self.ptr + k.shape[0]) % self.keys.shape[0])


@torch.no_grad()
def repair_bn_stats(module: nn.Module) -> int:
    """Reset non-finite BN running statistics (mean -> 0, var -> 1) left by a skipped non-finite
    forward; returns how many tensors were repaired. Called at the logging cadence."""
    fixed = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf, good in ((m.running_mean, 0.0), (m.running_var, 1.0)):
                bad = ~torch.isfinite(buf)
                if bad.any():
                    buf[bad] = good
                    fixed += 1
    return fixed
