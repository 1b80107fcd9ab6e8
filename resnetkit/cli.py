"""The ``resnetkit`` command line.

    resnetkit list ['resnet*']
    resnetkit summary resnet50 [--input-size 3 224 224] [--num-classes N] [--in-chans C]

Bad input ends with one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import UserError
from .registry import UnknownModelError, create_model, list_models
from .summary import summary


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options every command that builds a model shares (``create_model`` keywords)."""
    g = p.add_argument_group("model")
    g.add_argument("--num-classes", type=int, default=None)
    g.add_argument("--in-chans", type=int, default=None)
    g.add_argument("--shortcut", choices=["A", "B", "C", "none"], default=None)
    g.add_argument("--version", dest="model_version", choices=["1", "1.5", "2"], default=None)
    g.add_argument("--zero-init-residual", action="store_true", default=None)
    g.add_argument("--drop-path-rate", type=float, default=None)


def model_kwargs(args: argparse.Namespace) -> dict:
    pairs = {
        "num_classes": args.num_classes, "in_chans": args.in_chans, "shortcut": args.shortcut,
        "version": args.model_version, "zero_init_residual": args.zero_init_residual,
        "drop_path_rate": args.drop_path_rate,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def cmd_list(args: argparse.Namespace) -> None:
    print("\n".join(list_models(args.pattern)))


def cmd_summary(args: argparse.Namespace) -> None:
    model = create_model(args.model, **model_kwargs(args))
    size = tuple(args.input_size) if args.input_size else model.default_input_size
    if args.in_chans is not None and not args.input_size:
        size = (args.in_chans, *size[1:])
    s = summary(model, (1, *size))
    print(json.dumps({"model": args.model, **s.to_dict()}) if args.json else s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnetkit", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("summary", help="per-layer table, parameters and MACs of a model")
    p.add_argument("model")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="default: 3 224 224 for ImageNet nets, 3 32 32 for CIFAR nets")
    p.add_argument("--json", action="store_true", help="print the totals as one JSON object")
    add_model_args(p)
    p.set_defaults(func=cmd_summary)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list:
    """Commands living next to what they run, imported lazily so `summary` stays fast."""
    from . import draw, evaluate, experiments, report, train

    return [train.add_cli, evaluate.add_cli, experiments.add_cli, draw.add_cli, report.add_cli]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv  # experiments record the exact command that made them
        args.func(args)
    except (UserError, UnknownModelError, FileNotFoundError, ValueError) as e:
        if debug:
            raise
        msg = e.strerror + f": {e.filename}" if isinstance(e, FileNotFoundError) and e.filename else e
        print(f"resnetkit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnetkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
