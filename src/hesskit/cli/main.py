"""Entry point of the ``hesskit`` command: argument parsing and dispatch.

Each sub-command lives in its own module ``hesskit.cli.cmd_<name>`` exposing
``register(subparsers)``, which adds a parser and sets ``run=<function(args) -> int>``.
Every :class:`~hesskit.errors.HesskitError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hesskit import __version__
from hesskit.errors import HesskitError

COMMANDS = (
    "activations",
    "newton",
    "neuron",
    "hessian",
    "spectrum",
    "diagonal",
    "train",
    "bench",
    "demo",
)

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (argparse prints the usage too)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hesskit",
        description="Second-order derivatives of neural networks and the optimizers that use them.",
    )
    parser.add_argument("--version", action="version", version=f"hesskit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"hesskit.cli.cmd_{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except HesskitError as error:
        print(f"hesskit {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hesskit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
