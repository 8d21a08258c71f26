"""Throughput benchmarks; one function per mode, one CLI. Rows go to
benchmarks/results/throughput.jsonl (results_io.append_rows), stamped with provenance.

  --mode loader   source images/s of each fastdisco loader backend on prepared data, and of
                  the official DisCo input pipeline (torchvision ImageFolder + PIL + MoCo v2
                  transforms in DataLoader workers) over the original JPEGs, in one run.

Example (CPU, small synthetic set of 500x375 JPEGs made on the fly):
  python benchmarks/throughput.py --mode loader --synthetic 320 --workers 2 --batch 32
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fastdisco._compat  # noqa: E402,F401


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_synthetic(root: Path, n: int) -> tuple[Path, Path]:
    """n class-folder JPEGs of 500x375 (ImageNet's typical size) and their prepared dataset."""
    from fastdisco.data.prepare import prepare_dataset
    from fastdisco.data.synthetic import write_synthetic_folder

    classes = 4
    src = write_synthetic_folder(root / "src", num_classes=classes, per_class=max(1, n // classes),
                                 size=(375, 500), ext="jpg")
    prepare_dataset(src, root / "prepared", workers=2, max_side=512, quality=90)
    return src, root / "prepared"


def official_baseline_loader(src: Path, batch: int, workers: int, res: int):
    """The official DisCo / MoCo v2 input pipeline ("aug-plus"), as in its main.py."""
    import random

    import torch
    import torchvision.datasets as datasets
    import torchvision.transforms as T
    from PIL import ImageFilter

    class GaussianBlur:  # moco/loader.py
        def __init__(self, sigma=(0.1, 2.0)):
            self.sigma = sigma

        def __call__(self, x):
            return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    class TwoCropsTransform:
        def __init__(self, t):
            self.t = t

        def __call__(self, x):
            return [self.t(x), self.t(x)]

    aug = T.Compose([
        T.RandomResizedCrop(res, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur([0.1, 2.0])], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    ds = datasets.ImageFolder(str(src), TwoCropsTransform(aug))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0)


def _time_epochs(loader, device, epochs: int, set_epoch=None) -> tuple[float, int]:
    """Warm-up epoch (worker start, ffcv compile), then images/s over `epochs` timed epochs."""
    for e in range(epochs + 1):
        if set_epoch:
            set_epoch(e)
        if e == 1:
            _sync(device)
            t0, n = time.perf_counter(), 0
        for b in loader:
            if e >= 1:
                views = b.views if hasattr(b, "views") else b[0]
                n += views[0].shape[0]
        if e == 0:
            continue
    _sync(device)
    dt = time.perf_counter() - t0
    return n / dt, n


def run_loader(args) -> list[dict]:
    import torch

    from fastdisco.config import DataConfig
    from fastdisco.data.loader import make_loader
    from fastdisco.errors import FastdiscoError

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tmp = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory()
        src, data = make_synthetic(Path(tmp.name), args.synthetic)
    else:
        src, data = Path(args.src) if args.src else None, Path(args.data)
    rows = []
    common = dict(mode="loader", views=2, resolution=args.resolution, batch=args.batch, workers=args.workers,
                  device=str(device), recipe="mocov2", epochs_timed=args.epochs)
    for be in args.backends.split(","):
        cfg = DataConfig(path=str(data), backend=be, recipe="mocov2", resolution=args.resolution,
                         batch_size=args.batch, num_workers=args.workers, dali_threads=args.workers)
        try:
            ld = make_loader(cfg, device=device, dtype=dtype)
        except FastdiscoError as e:
            print(f"skip {be}: {e}")
            continue
        ips, n = _time_epochs(ld, device, args.epochs, ld.set_epoch)
        rows.append({**common, "backend": be, "images_per_s": round(ips, 1), "images": n, "data": "prepared"})
        print(f"{be:>16}: {ips:8.1f} source images/s ({n} images)")
    if src is not None:
        dl = official_baseline_loader(src, args.batch, args.workers, args.resolution)
        ips, n = _time_epochs(dl, torch.device("cpu"), args.epochs)
        rows.append({**common, "backend": "official_disco_torchvision", "images_per_s": round(ips, 1), "images": n,
                     "data": "original_jpeg", "device": "cpu"})
        print(f"{'official DisCo':>16}: {ips:8.1f} source images/s ({n} images)")
        base = rows[-1]["images_per_s"]
        for r in rows[:-1]:
            r["vs_official"] = round(r["images_per_s"] / base, 2)
            print(f"{r['backend']:>16}: {r['vs_official']:.2f}x official")
    if tmp is not None:
        tmp.cleanup()
    return rows


MODES = {"loader": run_loader}  # model / step: to be added by the engine's benchmark


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="loader")
    p.add_argument("--data", default="", help="prepared dataset (fastdisco prepare-data output)")
    p.add_argument("--src", default="", help="the original JPEG class folders, for the official baseline")
    p.add_argument("--synthetic", type=int, default=0, help="make N synthetic 500x375 JPEGs and prepare them")
    p.add_argument("--backends", default="torch,dali,ffcv")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs after one warm-up epoch")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if not args.synthetic and not args.data:
        p.error("give --data (and --src) or --synthetic N")
    rows = MODES[args.mode](args)
    if rows and not args.no_save:
        from results_io import append_rows

        print("appended to", append_rows("throughput", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
