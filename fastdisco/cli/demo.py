"""`fastdisco demo` (`make demo`): the quickstart's main job on the embedded default data
(fastdisco.demo): prepare, train a teacher and students, evaluate, print the table."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--data", default="data/demo", help="where prepared data goes")
    p.add_argument("--out", default="runs/demo", help="where runs and results go")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    from fastdisco.demo import run_demo

    return run_demo(args)
