"""resnetkit: build, train, evaluate, draw and explain Residual Networks.

    resnetkit list ['resnet*']
    resnetkit summary resnet50 [--input-size 3 224 224] [--num-classes N] [--in-chans C]
    resnetkit train | eval | predict | export | experiment | draw | report ...   (each with --help)

Bad input ends with one line on stderr and exit code 2; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import re
import sys

from . import __version__, draw, evaluate, export, predict, probes, report, train
from .config import add_model_args, check_model, model_kwargs_for_input
from .errors import UserError
from .registry import create_model, list_models
from .summary import summary


def cmd_list(args: argparse.Namespace) -> None:
    print("\n".join(list_models(args.pattern)))


def cmd_summary(args: argparse.Namespace) -> None:
    kwargs = model_kwargs_for_input(args)
    check_model(args.model, kwargs)  # bad arguments: a one-line error, not a traceback
    model = create_model(args.model, **kwargs)
    size = tuple(args.input_size) if args.input_size else model.default_input_size
    if args.in_chans is not None and not args.input_size:
        size = (args.in_chans, *size[1:])
    s = summary(model, (1, *size))
    print(json.dumps({"model": args.model, **s.to_dict()}) if args.json else s)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (not the whole usage first), naming the
    nearest valid flag for a misspelt one. Subcommand parsers are made of this class too."""

    def error(self, message: str):
        unknown = re.match(r"unrecognized arguments: (-[^\s=]+)", message)
        if unknown:
            close = difflib.get_close_matches(unknown.group(1), self.all_flags(), n=1, cutoff=0.6)
            message += f"; did you mean {close[0]}?" if close else ""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def all_flags(self) -> list[str]:
        flags = [o for a in self._actions for o in a.option_strings]
        for a in self._actions:
            if isinstance(a, argparse._SubParsersAction):
                flags += [f for p in a.choices.values() for f in p.all_flags()]
        return flags


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="resnetkit", description=__doc__.split("\n")[0].split(": ", 1)[1],
                                     epilog="\n".join(__doc__.split("\n")[2:5]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"resnetkit {__version__}")
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

    # probes registers `experiment`: experiments.py's own and its two (see probes.add_cli).
    for command in (train, evaluate, predict, export, probes, draw, report):
        command.add_cli(sub)
    return parser


def _log_warnings() -> None:
    """The library reports problems it can live with (an unreadable image) through the
    ``resnetkit`` logger; on the command line each becomes one ``warning:`` line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("resnetkit: warning: %(message)s"))
    logger = logging.getLogger("resnetkit")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    _log_warnings()
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv  # experiments record the exact command that made them
        args.func(args)
    except UserError as e:  # our own errors are about the input; anything else is a bug: traceback
        if debug:
            raise
        print(f"resnetkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnetkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
