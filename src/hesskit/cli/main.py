"""Entry point of the ``hesskit`` command: argument parsing and dispatch.

Each sub-command lives in its own module ``hesskit.cli.cmd_<name>`` exposing
``register(subparsers)``, which adds a parser and sets ``run=<function(args) -> int>``.
Every :class:`~hesskit.errors.HesskitError` becomes one line on stderr and exit code 2, and
so does any exception raised by the user's own code (``--model``; see
:mod:`hesskit.cli.user_code`), running out of memory, and a file-system error. Warnings
raised while a command runs are held: a failing command prints only its one line (with
``--traceback``, the warnings too), a command that succeeds shows them at its end. Anything else
is a bug in hesskit: one line asking for a report, exit code 1. ``--traceback`` (anywhere on
the command line) or ``HESSKIT_TRACEBACK=1`` prints the full traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from hesskit import __version__
from hesskit.cli.help_format import HelpFormatter
from hesskit.cli.user_code import USER_ROOTS, describe_exception, one_line, user_frame
from hesskit.errors import HesskitError, PeerLostError
from hesskit.extras import is_optional_module, missing_extra_message

COMMANDS = (
    "activations",
    "newton",
    "neuron",
    "hessian",
    "spectrum",
    "diagonal",
    "precondition",
    "train",
    "bench",
    "demo",
)

EXIT_USAGE = 2
EXIT_BUG = 1
TRACEBACK_VARIABLE = "HESSKIT_TRACEBACK"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (argparse prints the usage too) and
    whose help is plain text wrapped to the terminal, every default shown
    (:class:`~hesskit.cli.help_format.HelpFormatter`, for every sub-command too)."""

    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hesskit",
        description="Second-order derivatives of neural networks and the optimizers that use them.",
    )
    parser.add_argument("--version", action="version", version=f"hesskit {__version__}")
    parser.add_argument("--traceback", action="store_true", help=TRACEBACK_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"hesskit.cli.cmd_{name}").register(subparsers)
    for subparser in subparsers.choices.values():  # also accepted after the command
        subparser.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                               help=TRACEBACK_HELP)
    return parser


TRACEBACK_HELP = (f"on an error, print Python's full traceback as well as the one-line message "
                  f"(or set {TRACEBACK_VARIABLE}=1)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ModuleNotFoundError as error:  # the cli extra is not installed
        if not is_optional_module(error.name):
            raise
        message = missing_extra_message(error.name or "", "the hesskit command")
        print(f"hesskit: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    verbose = args.traceback or os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0")
    folder = _announce_command(args, sys.argv[1:] if argv is None else list(argv))
    with warnings.catch_warnings(record=True) as caught:
        try:
            code = int(args.run(args) or 0)
            if code == 0 and folder is not None and os.path.isdir(folder):
                from hesskit.report.provenance import record_pending

                record_pending(Path(folder))
        except KeyboardInterrupt:
            print("hesskit: interrupted", file=sys.stderr)
            return 130
        except Exception as error:
            if verbose:
                for record in caught:
                    print(warnings.formatwarning(record.message, record.category,
                                                 record.filename, record.lineno),
                          end="", file=sys.stderr)
                traceback.print_exception(error, file=sys.stderr)
            message, code = failure_line(error, user_code=bool(getattr(args, "model", None)))
            print(f"hesskit {args.command}: {message}", file=sys.stderr)
            if isinstance(error, PeerLostError):
                _exit_at_once(code)
            return code
        finally:
            if folder is not None:
                from hesskit.report.provenance import set_pending

                set_pending(None)
    _show(caught)
    return code

def _exit_at_once(code: int) -> None:
    """End the process now, skipping the interpreter's shutdown: with a peer lost,
    ``torch.distributed``'s destructors may wait on it (every file hesskit writes is already
    complete: they are written atomically)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


MAX_WARNINGS_SHOWN = 100
"""Warnings (from torch or the user's code) are held while a command runs, so that a
failing command prints only its one error line (``--traceback`` shows them too), and shown
at the end of a command that succeeds; at most this many, then a count of the rest."""


def _show(caught: list[warnings.WarningMessage]) -> None:
    """Emit the held warnings again, through the warning filters now in force."""
    for record in caught[:MAX_WARNINGS_SHOWN]:
        warnings.warn_explicit(record.message, record.category, record.filename,
                               record.lineno, source=record.source)
    if len(caught) > MAX_WARNINGS_SHOWN:
        print(f"hesskit: {len(caught) - MAX_WARNINGS_SHOWN} more warnings not shown",
              file=sys.stderr)


PAGE_COMMANDS = ("activations", "newton", "neuron", "hessian", "spectrum", "diagonal")
"""The commands whose output folder gets a page (and so a ``command.txt`` for it)."""


def _announce_command(args: argparse.Namespace, argv: list[str]) -> str | None:
    """Tell ``hesskit.report.provenance`` the command line (and the model) of a command
    that writes a page's folder, so that its page shows them; returns that folder."""
    folder = getattr(args, "out", None) or getattr(args, "plot", None)
    if args.command not in PAGE_COMMANDS or not folder:
        return None
    from hesskit.cli.model_spec import model_description
    from hesskit.report.provenance import set_pending

    set_pending([arg for arg in argv if arg != "--traceback"], model_description(args))
    return str(folder)


def failure_line(error: Exception, *, user_code: bool = False) -> tuple[str, int]:
    """The one line (after ``hesskit COMMAND: ``) and exit code for an exception.

    Args:
        error: what escaped the command.
        user_code: the command ran the user's own code (``--model``), so an error raised
            inside torch while running it (a shape mismatch) is most likely the user's.
    """
    if isinstance(error, ModuleNotFoundError) and is_optional_module(error.name):
        return f"error: {missing_extra_message(error.name, 'this command')}", EXIT_USAGE
    if isinstance(error, HesskitError):
        return f"error: {one_line(str(error), limit=2000)}", EXIT_USAGE
    if isinstance(error, MemoryError):
        return (f"error: out of memory ({describe_exception(error)}); choose a smaller "
                "model, fewer samples or smaller counts"), EXIT_USAGE
    if isinstance(error, OSError):
        return f"error: {describe_exception(error)}", EXIT_USAGE
    if user_frame(error) is not None:
        return f"error: {describe_exception(error)}", EXIT_USAGE
    if user_code and USER_ROOTS:
        return (f"error: your model raised {describe_exception(error)} while hesskit ran it "
                "(--traceback shows where)"), EXIT_USAGE
    return (f"internal error: {describe_exception(error)}; this is a bug in hesskit: rerun "
            "with --traceback and report it"), EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
