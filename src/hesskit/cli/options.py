"""Argument types and output-folder handling shared by the sub-commands.

Each type raises ``argparse.ArgumentTypeError`` so that a bad value ends with one line and
exit code 2; :func:`output_dir` raises :class:`InvalidArgumentError` for the same effect.
Every count has an upper bound (:data:`MAX_COUNT` unless the option says less), so that a
typo such as ``10**30`` is refused at once instead of running out of memory or time.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

from hesskit.errors import InvalidArgumentError


def memory_size(text: str) -> int:
    """A memory size such as ``2GB`` or ``512MiB`` in bytes, for ``--memory-budget``."""
    from hesskit.memory import parse_bytes

    try:
        return parse_bytes(text)
    except InvalidArgumentError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    except (OverflowError, ValueError):  # "1e400GB" is infinite
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite memory size") from None


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


MAX_COUNT = 10**9
"""The largest count (steps, probes, samples, ...) any option accepts."""

MAX_SEED = 2**63 - 1
"""The largest seed: torch's and NumPy's generators take 64-bit seeds."""


def positive_int(text: str) -> int:
    """An integer from 1 to :data:`MAX_COUNT`."""
    return _integer_in(text, 1, MAX_COUNT)


def non_negative_int(text: str) -> int:
    """An integer from 0 to :data:`MAX_COUNT` (e.g. a step count, 0 meaning "only the start")."""
    return _integer_in(text, 0, MAX_COUNT)


def seed(text: str) -> int:
    """A seed: an integer from 0 to 2⁶³ − 1."""
    return _integer_in(text, 0, MAX_SEED)


def int_between(lowest: int, highest: int) -> Callable[[str], int]:
    """The argument type of an integer from ``lowest`` to ``highest`` (both included)."""

    def parse(text: str) -> int:
        return _integer_in(text, lowest, highest)

    parse.__name__ = f"integer from {lowest} to {highest}"
    return parse


def float_below(highest: float, *, lowest: float = 0.0, open_high: bool = False,
                open_low: bool = True) -> Callable[[str], float]:
    """The argument type of a finite float in the interval ``(lowest, highest]``; the ends are
    open or closed as ``open_low`` / ``open_high`` say."""

    def parse(text: str) -> float:
        value = finite_float(text)
        low_ok = value > lowest if open_low else value >= lowest
        high_ok = value < highest if open_high else value <= highest
        if not (low_ok and high_ok):
            interval = (f"{'(' if open_low else '['}{lowest:g}, {highest:g}"
                        f"{')' if open_high else ']'}")
            raise argparse.ArgumentTypeError(f"{text!r} must lie in {interval}")
        return value

    parse.__name__ = "number"
    return parse


def _integer_in(text: str, lowest: int, highest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {lowest}")
    if value > highest:
        raise argparse.ArgumentTypeError(f"{text!r} is too large: at most {highest:,}")
    return value


def output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create ``path`` (and parents) and check that files can be written in it.

    ``option`` names the command-line option that chose the folder, for the error message.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # one probe per process: ranks of a torchrun probing the same folder at once
        # would otherwise unlink each other's probe
        probe = folder / f".hesskit-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InvalidArgumentError(
            f"cannot write to output folder {str(folder)!r} ({reason}); "
            f"choose another with {option}"
        ) from None
    return folder


OPTIMIZER_NAMES = ("hf", "shf", "newton", "kfac", "shampoo", "sophia", "sophia-h",
                   "adahessian", "rmsprop", "adam", "sgd", "lbfgs")
"""The registry's names (``hesskit.training.optimizers.REGISTRY``) for ``--help`` without
importing the training stack at start-up; a test keeps the two equal."""


DATA_DIR_HELP = ("folder of the MNIST (and CURVES) files (default $HESSKIT_DATA_DIR, else "
                 "~/.cache/hesskit/data)")
"""``--data-dir``'s help, the same on every command (``hesskit.data.cache`` resolves it)."""


def problem_name(text: str) -> str:
    """A benchmark problem's name (``hesskit.problems.PROBLEM_NAMES``)."""
    from hesskit.problems import PROBLEM_NAMES

    if text not in PROBLEM_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown problem {text!r}; choose one of {', '.join(PROBLEM_NAMES)}")
    return text


def problem_help(prefix: str = "a benchmark problem") -> str:
    """``--problem``'s help: ``prefix`` and every choice."""
    from hesskit.problems import PROBLEM_NAMES

    return f"{prefix}: {', '.join(PROBLEM_NAMES)}"
