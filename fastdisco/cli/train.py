"""`fastdisco train --config configs/X.yaml [--set section.key=value ...]`

Re-running the same command with the same train.out_dir resumes from its last checkpoint.
Multi-GPU: `torchrun --nproc_per_node=N -m fastdisco train --config ...`.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe (overrides of the defaults in fastdisco/config.py)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable), e.g. --set train.out_dir=runs/x")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume a run folder whose checkpoint has other config values (lr, batch size, ...): "
                             "the changes are printed; same as --set train.allow_config_change=true")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    format_help = parser.format_help

    def with_fields() -> str:  # built only when help is shown, not on every `fastdisco` call
        from fastdisco.config import describe_fields  # no torch: the dataclasses and their comments

        parser.epilog = ("config fields (section.key: type = default  # meaning), set with --set or in --config "
                         "YAML:\n" + describe_fields())
        return format_help()

    parser.format_help = with_fields


def main(args: argparse.Namespace) -> int:
    from fastdisco.config import build_config, to_dict

    cfg = build_config(args.config, args.sets)
    if getattr(args, "allow_config_change", False):
        cfg.train.allow_config_change = True
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from fastdisco.engine.trainer import train

    result = train(cfg)
    if result["interrupted"]:
        return 0  # clean exit after saving; the same command resumes
    print(f"fastdisco train: done, step {result['step']}/{result['total_steps']}, "
          f"checkpoint {result['last_checkpoint']}")
    return 0
