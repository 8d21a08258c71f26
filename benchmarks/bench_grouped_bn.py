"""Grouped BN, forward + backward of one layer: the copy-free implementation
(fastdisco.models.grouped_bn) beside the one it replaced (reshape [N, C, H, W] -> [N/G, G*C, H, W],
F.batch_norm, copy back; kept in tests/test_grouped_bn.py as the reference), side by side in one
run, on EfficientNet-B0-like BN shapes (channels x size at 224 px, scaled by --resolution).

Cases per shape, memory format (contiguous, channels_last) and dtype:
  one_view   one batch of --batch samples, groups of --group
  two_views  the two views of a DisCo step: old = two calls on --batch each; new = one call on
             the stacked 2 x --batch inside batched_views(2) (same statistics, see the tests)
and, with --student NAME, the whole student (timm NAME + DisCo head, shuffle-BN groups of
--group) on both views at --student-resolution: `old` = the old layer, one forward per view (the
step before this change); `new` = the copy-free layer, both views in one batched forward (the
step now). Time = median over --repeats of (forward + backward), old and new alternating. Rows go to
benchmarks/results/grouped_bn.jsonl (results_io.append_rows); on a CPU the rows say so
(`label: CPU`): wall clock on a shared machine, compare the ratio within one run.

    .venv/bin/python benchmarks/bench_grouped_bn.py --batch 64 --resolution 112 --repeats 5 \
        --student efficientnet_b0 --student-resolution 64
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.results_io import append_rows  # noqa: E402
from benchmarks.timing import time_interleaved  # noqa: E402
from fastdisco.models.grouped_bn import GroupedBatchNorm2d, batched_views  # noqa: E402
from tests.test_grouped_bn import OldGroupedBatchNorm2d  # noqa: E402

# (channels, spatial size at 224 px) of EfficientNet-B0 BN layers, one per stage
SHAPES = [(32, 112), (96, 56), (144, 28), (480, 14), (1152, 7)]


def _fwd_bwd(bn, xs: list[torch.Tensor], dys: list[torch.Tensor], views: int) -> None:
    with batched_views(views):
        for x, dy in zip(xs, dys):
            bn(x).backward(dy)


class _OldWithPost(OldGroupedBatchNorm2d):
    """The old layer plus the activation of timm's BatchNormAct2d (as the old student had it)."""

    def __init__(self, new: GroupedBatchNorm2d):
        super().__init__(new.num_features, new.group_size, new.eps, new.momentum)
        self.load_state_dict(new.state_dict())
        self.post = new.post

    def forward(self, x):
        return self.post(super().forward(x))


def _with_old_bn(module: torch.nn.Module) -> torch.nn.Module:
    for name, child in list(module.named_children()):
        if isinstance(child, GroupedBatchNorm2d):
            setattr(module, name, _OldWithPost(child))
        else:
            _with_old_bn(child)
    return module


def student_rows(args, device: torch.device, label: str) -> list[dict]:
    import copy

    from fastdisco.config import ModelConfig
    from fastdisco.models.student import build_student

    g = torch.Generator().manual_seed(0)
    rows = []
    for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        torch.manual_seed(0)
        new = build_student(ModelConfig(student=args.student, shuffle_bn_group=args.group), "disco")
        new = new.to(device, memory_format=fmt)
        old = _with_old_bn(copy.deepcopy(new))
        r = args.student_resolution
        x0, x1 = [torch.randn(args.batch, 3, r, r, generator=g).to(device).contiguous(memory_format=fmt)
                  for _ in range(2)]

        def run_old():
            (old(x0).sum() + old(x1).sum()).backward()

        def run_new():
            with batched_views(2):
                new(torch.cat([x0, x1])).sum().backward()

        ms = {k: v * 1e3 for k, v in time_interleaved({"old": run_old, "new": run_new}, args.repeats, device).items()}
        row = dict(label=label, case="student_two_views", student=args.student, resolution=r,
                   batch_per_view=args.batch, group=args.group, dtype="float32", memory_format=fmt_name,
                   threads=torch.get_num_threads(), timer="wall", old_ms=round(ms["old"], 1),
                   new_ms=round(ms["new"], 1), speedup=round(ms["old"] / ms["new"], 2))
        print(f"{label} student {args.student} {r}px {fmt_name:13s} old (per view) {ms['old']:8.1f} ms  "
              f"new (batched) {ms['new']:8.1f} ms  x{row['speedup']:.2f}", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="samples per view")
    ap.add_argument("--group", type=int, default=32, help="group size (model.shuffle_bn_group)")
    ap.add_argument("--resolution", type=int, default=112, help="input size the BN shapes are scaled to")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--student", default="", help="also time a whole student (timm name), e.g. efficientnet_b0")
    ap.add_argument("--student-resolution", type=int, default=64)
    ap.add_argument("--no-layers", action="store_true", help="only the --student case")
    ap.add_argument("--no-save", action="store_true", help="print only, append no rows")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    label = "GPU" if device.type == "cuda" else "CPU"
    g = torch.Generator().manual_seed(0)
    rows = student_rows(args, device, label) if args.student else []
    for c, size in ([] if args.no_layers else SHAPES):
        hw = max(1, size * args.resolution // 224)
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
                new = GroupedBatchNorm2d(c, args.group).to(device)  # fp32 parameters, as under autocast
                old = OldGroupedBatchNorm2d(c, args.group).to(device)
                x = [(torch.randn(args.batch, c, hw, hw, generator=g) * 2 + 1).to(device, dtype)
                     .contiguous(memory_format=fmt).requires_grad_(True) for _ in range(2)]
                dy = [torch.randn(x[0].shape, generator=g).to(device, dtype).contiguous(memory_format=fmt)
                      for _ in range(2)]
                x2 = torch.cat([t.detach() for t in x]).requires_grad_(True)
                dy2 = torch.cat(dy)
                cases = {
                    "one_view": {"old": lambda: _fwd_bwd(old, x[:1], dy[:1], 1),
                                 "new": lambda: _fwd_bwd(new, x[:1], dy[:1], 1)},
                    "two_views": {"old": lambda: _fwd_bwd(old, x, dy, 1),
                                  "new": lambda: _fwd_bwd(new, [x2], [dy2], 2)},
                }
                for case, fns in cases.items():
                    ms = {k: v * 1e3 for k, v in time_interleaved(fns, args.repeats, device).items()}
                    row = dict(label=label, case=case, channels=c, size=hw, batch_per_view=args.batch,
                               group=args.group, dtype=dtype_name, memory_format=fmt_name,
                               threads=torch.get_num_threads(), timer="wall",
                               old_ms=round(ms["old"], 3), new_ms=round(ms["new"], 3),
                               speedup=round(ms["old"] / ms["new"], 2))
                    print(f"{label} {case:9s} C={c:4d} {hw:3d}px {dtype_name:8s} {fmt_name:13s} "
                          f"old {ms['old']:8.2f} ms  new {ms['new']:8.2f} ms  x{row['speedup']:.2f}", flush=True)
                    rows.append(row)
    if not args.no_save:
        print("appended to", append_rows("grouped_bn", rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
