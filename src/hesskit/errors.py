"""Errors a user can cause, each with a message that says what was wrong and what to do.

The command line turns every :class:`HesskitError` into one line on stderr and exit
code 2; library users catch the subclass they care about.
"""

from __future__ import annotations


class HesskitError(Exception):
    """Base class: a problem with the user's input or request, not a bug in hesskit."""


class InvalidArgumentError(HesskitError, ValueError):
    """An argument has a value hesskit cannot use (unknown name, wrong shape, bad number)."""


class TooLargeError(HesskitError, MemoryError):
    """A dense matrix, or an estimator's vectors, would not fit in the memory budget.

    The message names what does fit instead: a matrix-free method or a smaller setting.
    """


class DataError(HesskitError, OSError):
    """A data file is missing, truncated or not in the expected format."""


class NonFiniteError(HesskitError, FloatingPointError):
    """A loss, gradient or curvature product is NaN or infinite where a finite value is needed."""


class UnsupportedArchitectureError(InvalidArgumentError):
    """The model is not a chain of supported layers, so no exact diagonal by backpropagation."""


class PeerLostError(HesskitError, ConnectionError):
    """A distributed peer stopped responding (hung, stopped) or its connection closed
    (crashed, killed): the surviving ranks stop instead of waiting."""


class MissingExtraError(HesskitError, ImportError):
    """An optional package (plots, terminal output, a data set's helper) is not installed;
    the message names the extra that brings it (``pip install 'hesskit[cli]'``)."""
