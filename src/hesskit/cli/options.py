"""Argument types and output-folder handling shared by the sub-commands.

Each type raises ``argparse.ArgumentTypeError`` so that a bad value ends with one line and
exit code 2; :func:`output_dir` raises :class:`InvalidArgumentError` for the same effect.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from hesskit.errors import InvalidArgumentError


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


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _integer_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (e.g. a step count where 0 means "only the start")."""
    return _integer_at_least(text, 0)


def _integer_at_least(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {lowest}")
    return value


def output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create ``path`` (and parents) and check that files can be written in it.

    ``option`` names the command-line option that chose the folder, for the error message.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".hesskit-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InvalidArgumentError(
            f"cannot write to output folder {str(folder)!r} ({reason}); "
            f"choose another with {option}"
        ) from None
    return folder
