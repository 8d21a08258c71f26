"""`fastdisco` console script: a thin dispatcher over one module per command (fastdisco.cli.*).

Each command module exposes `add_arguments(parser)` and `main(args) -> int`, and imports torch,
the loaders and other heavy or optional dependencies only inside `main`: `fastdisco --help` and
every command's `--help` answer without importing torch.

Exit codes: 0 success; 1 a runtime error (a FastdiscoError: missing file, bad checkpoint, ...);
2 a usage error (argparse's convention: a wrong command line or config key, a UsageError);
130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("fastdisco.cli.prepare_data", "convert images into FFCV .beton + DALI webdataset shards"),
    "inspect": ("fastdisco.cli.inspect", "verify a prepared dataset and write a PNG grid of samples"),
    "train": ("fastdisco.cli.train", "train a student: mocov2 | disco | ssld | supervised"),
    "eval": ("fastdisco.cli.eval", "linear probe, kNN, semi-supervised and SSLD evaluation"),
    "export": ("fastdisco.cli.export", "export the student backbone as timm-loadable safetensors (+ ONNX)"),
    "convert-teacher": ("fastdisco.cli.convert_teacher", "convert a teacher from another framework (PaddleClas .pdparams) to timm weights"),
    "mine": ("fastdisco.cli.mine", "SSLD unlabeled-data mining: teacher top-k per class, near-duplicates removed"),
    "demo": ("fastdisco.cli.demo", "the quickstart: prepare Fashion-MNIST, train teacher + students, evaluate"),
}


def build_parser() -> argparse.ArgumentParser:
    from fastdisco import __version__

    parser = argparse.ArgumentParser(
        prog="fastdisco", description="Distill big frozen vision teachers into lightweight students (DisCo, SSLD).")
    parser.add_argument("--version", action="version", version=f"fastdisco {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=mod.__doc__ or help_,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fastdisco.errors import FastdiscoError, UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.main(args) or 0)
    except FastdiscoError as e:
        print(f"fastdisco {args.command}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        print(f"fastdisco {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
