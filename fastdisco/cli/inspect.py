"""`fastdisco inspect OUT`: verify a prepared dataset and write a PNG grid of samples.

Checks the manifest against the files, decodes samples from each format and compares them
(fastdisco.dataset.inspect). Exits 1 when anything is wrong.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="a folder written by `fastdisco prepare-data`")
    p.add_argument("--samples", type=int, default=16, help="samples to decode and show (16)")
    p.add_argument("--grid", help="PNG grid path (default OUT/inspect.png)")


def main(args: argparse.Namespace) -> int:
    from fastdisco.dataset.inspect import inspect_dataset

    report = inspect_dataset(args.out, args.samples, args.grid)
    for k, v in report["checked"].items():
        print(f"{k}: {v}")
    if report["grid"]:
        print(f"grid: {report['grid']}")
    for p in report["problems"]:
        print(f"PROBLEM: {p}")
    print("OK" if not report["problems"] else f"{len(report['problems'])} problem(s)")
    return 1 if report["problems"] else 0
