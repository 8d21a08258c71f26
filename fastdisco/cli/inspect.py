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
    p.add_argument("--full", action="store_true",
                   help="verify the sha256 of every shard, index and .beton against manifest.json (reads every "
                        "byte) and name each damaged file")


def main(args: argparse.Namespace) -> int:
    from fastdisco.dataset.inspect import inspect_dataset
    from fastdisco.errors import FastdiscoError

    try:
        report = inspect_dataset(args.out, args.samples, args.grid, full=args.full)
    except FastdiscoError:
        raise  # one line from the CLI (no manifest.json at all)
    except Exception as e:  # damage none of the checks foresaw: still a report, never a traceback
        report = {"checked": {}, "grid": None,
                  "problems": [f"inspect stopped on damaged data: {e.__class__.__name__}: {str(e)[:200]}"]}
    for k, v in report["checked"].items():
        print(f"{k}: {v}")
    if report["grid"]:
        print(f"grid: {report['grid']}")
    for p in report["problems"]:
        print(f"PROBLEM: {p}")
    print("OK" if not report["problems"] else f"{len(report['problems'])} problem(s)")
    return 1 if report["problems"] else 0
