"""The one memory budget of hesskit, and the guards every large allocation goes through.

Every dense matrix — :meth:`CurvatureOperator.to_dense`, the dense H = G + R builders of
:mod:`hesskit.dense`, damped Newton's solve — is checked here before anything is
allocated (:func:`check_dense_fits`), and so is every matrix-free estimator's working set
of N-vectors — Lanczos bases, stochastic Lanczos quadrature, Hutch++ sketches, probe
chunks (:func:`check_vectors_fit`). Both are checked against one budget: by default
:data:`MEMORY_FRACTION` of the memory available now (``MemAvailable``), or a size the
caller names (``"2GB"``). An estimator's count covers the vectors it holds itself; the
operator's own workspace for one product (a forward and backward pass) is not included.
"""

from __future__ import annotations

import os
import re

import torch

from hesskit.errors import InvalidArgumentError, TooLargeError

MEMORY_FRACTION = 0.5
"""Default budget: this fraction of the currently available memory."""

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``, else ``sysconf``)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30  # no way to ask: assume a small machine


def default_memory_budget() -> int:
    """:data:`MEMORY_FRACTION` of :func:`available_memory`."""
    return int(MEMORY_FRACTION * available_memory())


def parse_bytes(text: str) -> int:
    """``"2GB"`` → 2·10⁹, ``"512MiB"`` → 512·2²⁰, ``"1e9"`` → 10⁹."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise InvalidArgumentError(
            f"{text!r} is not a memory size; write a positive number with a unit, "
            "e.g. 2GB or 512MiB"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(count: float) -> str:
    """A short human-readable size (decimal units)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def budget_bytes(memory_budget: int | str | None = None) -> int:
    """The budget in bytes: ``memory_budget`` (bytes or ``"2GB"``), else the default."""
    if memory_budget is None:
        return default_memory_budget()
    if isinstance(memory_budget, str):
        return parse_bytes(memory_budget)
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget <= 0:
        raise InvalidArgumentError(
            f"memory_budget must be a positive number of bytes or a size like '2GB', "
            f"got {memory_budget!r}"
        )
    return memory_budget


def check_dense_fits(
    num_params: int,
    dtype: torch.dtype,
    *,
    matrices: float = 1.0,
    what: str = "the dense matrix",
    instead: str = "use matrix-free products (op @ v), hutchinson_diagonal or top_eigenpairs",
    memory_budget: int | str | None = None,
) -> None:
    """Raise ``TooLargeError`` when ``matrices`` N×N matrices of ``dtype`` exceed the budget.

    Args:
        num_params: N.
        dtype: the entries' dtype.
        matrices: how many N×N matrices (or their equivalent in workspace) are held at once.
        what: what is being built, for the message.
        instead: the matrix-free alternative to name in the message.
        memory_budget: bytes or a size string; default :func:`default_memory_budget`.
    """
    needed = int(matrices * num_params**2 * (torch.finfo(dtype).bits // 8))
    budget = budget_bytes(memory_budget)
    if needed > budget:
        raise TooLargeError(
            f"{what} for N = {num_params} parameters needs {format_bytes(needed)} but the "
            f"memory budget is {format_bytes(budget)}; {instead}"
        )


def vector_bytes(num_params: int, dtype: torch.dtype) -> int:
    """Bytes of one vector of N numbers of ``dtype``."""
    return num_params * (torch.finfo(dtype).bits // 8)


def vectors_that_fit(
    num_params: int, dtype: torch.dtype, memory_budget: int | str | None = None
) -> int:
    """How many N-vectors of ``dtype`` the budget holds (0 when not even one fits)."""
    return budget_bytes(memory_budget) // max(1, vector_bytes(num_params, dtype))


def check_vectors_fit(
    num_params: int,
    dtype: torch.dtype,
    vectors: float,
    *,
    what: str,
    instead: str,
    memory_budget: int | str | None = None,
) -> int:
    """Raise ``TooLargeError`` when an estimator's ``vectors`` N-vectors exceed the budget.

    The matrix-free counterpart of :func:`check_dense_fits`, called before the estimator
    allocates anything: ``what`` names the estimator and its settings, ``instead`` the
    smaller setting or the alternative that fits (both go into the one-line message).

    Returns:
        The bytes needed, ``vectors · N · itemsize`` (for reports).
    """
    needed = int(vectors * vector_bytes(num_params, dtype))
    budget = budget_bytes(memory_budget)
    if needed > budget:
        raise TooLargeError(
            f"{what} for N = {num_params:,} parameters holds {vectors:g} vectors of N "
            f"{str(dtype).removeprefix('torch.')} numbers, {format_bytes(needed)}, but the "
            f"memory budget is {format_bytes(budget)}; {instead}"
        )
    return needed
