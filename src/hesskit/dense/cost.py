"""What a dense N×N build costs, and the guard that refuses one that does not fit.

Memory: ``matrices · N² · itemsize`` (1 matrix for H alone, 3 for H = G + R) plus a
workspace (the largest layer block twice, and the column chunks), checked against a budget
*before anything is allocated or measured*. The default budget is
:data:`MEMORY_FRACTION` of the memory the system reports available (``MemAvailable`` in
``/proc/meminfo``; ``os.sysconf`` where that file does not exist).

Time: measured, not assumed. :func:`estimate_cost` runs a short probe of the real build on
the user's model and data and extrapolates (:func:`hesskit.dense.builders.probe_seconds`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from hesskit.dense.builders import Method, probe_seconds, resolve
from hesskit.errors import InvalidArgumentError, TooLargeError
from hesskit.memory import (  # noqa: F401 - re-exported: the dense cost guard's budget
    MEMORY_FRACTION,
    available_memory,
    budget_bytes,
    default_memory_budget,
    format_bytes,
    parse_bytes,
)
from hesskit.problem import Problem

LANCZOS_VECTORS = 8
"""Vectors a Lanczos run for the top eigenvalue keeps when memory is short (for the
matrix-free alternatives): ``top_eigenpairs`` restarts thick on a basis as small as
k + 2 vectors (``estimators/thick_restart.py``); 8 is a basis of 6 plus its 2 work vectors."""


@dataclass(frozen=True)
class CostEstimate:
    """The predicted cost of a dense build (JSON-serialisable with :meth:`to_dict`).

    Attributes:
        num_params: N.
        entries: N², entries of one matrix.
        matrices: 1 (H) or 3 (H, G and R).
        dtype: the model's dtype, e.g. ``"float64"``.
        matrix_bytes: bytes of the matrices.
        workspace_bytes: bytes of the working memory besides the matrices (an estimate).
        budget_bytes: the memory budget the build is checked against.
        seconds: predicted build time from a probe (None if not measured).
        method: the build method (``"linear_chain"`` or ``"autodiff"``; None if not chosen).
    """

    num_params: int
    entries: int
    matrices: int
    dtype: str
    matrix_bytes: int
    workspace_bytes: int
    budget_bytes: int
    seconds: float | None = None
    method: str | None = None

    @property
    def total_bytes(self) -> int:
        return self.matrix_bytes + self.workspace_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes, "fits": self.fits}

    def summary(self) -> str:
        """Two lines for a terminal."""
        what = "H, G and R" if self.matrices == 3 else "H"
        time = f"~{self.seconds:.2f} s" if self.seconds is not None else "not measured"
        return (
            f"N = {self.num_params:,} parameters, {self.entries:,} entries per matrix; "
            f"{what} in {self.dtype}: {format_bytes(self.total_bytes)} "
            f"(budget {format_bytes(self.budget_bytes)})\n"
            f"estimated build time of the matrices alone: {time}"
            + (f" ({self.method})" if self.method else "")
        )


def default_chunk_size(num_params: int, itemsize: int) -> int:
    """Columns per autodiff chunk: 256, fewer if four ``[K, N]`` buffers pass 64 MB."""
    return int(max(8, min(256, 64 * 10**6 // max(1, 4 * num_params * itemsize))))


def memory_estimate(
    problem: Problem,
    *,
    split: bool = True,
    memory_budget: int | str | None = None,
    chunk_size: int | None = None,
) -> CostEstimate:
    """Bytes a build would need; reads only the parameter layout (nothing is run)."""
    dtype = problem.dtype
    if dtype not in (torch.float32, torch.float64):
        raise InvalidArgumentError(
            f"dense Hessians are built in float32 or float64, but the model is {dtype}; "
            "convert it with model.double() or model.float()"
        )
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = problem.num_params
    chunk = chunk_size or default_chunk_size(n, itemsize)
    layer_sizes: dict[str, int] = {}
    for name, size in zip(problem.layout.names, problem.layout.sizes, strict=True):
        module = name.rsplit(".", 1)[0]
        layer_sizes[module] = layer_sizes.get(module, 0) + size
    largest = max(layer_sizes.values())
    matrices = 3 if split else 1
    return CostEstimate(
        num_params=n,
        entries=n * n,
        matrices=matrices,
        dtype=str(dtype).removeprefix("torch."),
        matrix_bytes=matrices * n * n * itemsize,
        workspace_bytes=(2 * largest * largest + 4 * chunk * n) * itemsize,
        budget_bytes=budget_bytes(memory_budget),
    )


def check_fits(estimate: CostEstimate) -> None:
    """Raise :class:`TooLargeError` (one sentence with N, bytes and what fits) if too large."""
    if estimate.fits:
        return
    n, itemsize = (
        estimate.num_params,
        estimate.matrix_bytes // (estimate.matrices * estimate.entries),
    )
    alternatives = [
        ("Hessian-vector products", 4 * n * itemsize, "hesskit.operators"),
        ("the diagonal", 4 * n * itemsize, "`hesskit diagonal`"),
        ("top eigenvalues by Lanczos", LANCZOS_VECTORS * n * itemsize, "`hesskit spectrum`"),
    ]
    fitting = [
        f"{name} (~{format_bytes(size)}, {where})"
        for name, size, where in alternatives
        if size <= estimate.budget_bytes
    ]
    instead = (
        ("; use a matrix-free method instead: " + ", ".join(fitting))
        if fitting
        else ("; not even matrix-free methods fit, so raise the budget or use fewer parameters")
    )
    what = "H, G and R" if estimate.matrices == 3 else "the Hessian"
    raise TooLargeError(
        f"a dense build of {what} for N = {n:,} parameters ({estimate.entries:,} entries per "
        f"matrix) needs {format_bytes(estimate.total_bytes)} but the memory budget is "
        f"{format_bytes(estimate.budget_bytes)}" + instead
    )


def estimate_cost(
    problem: Problem,
    *,
    split: bool = True,
    method: Method | str = Method.AUTO,
    memory_budget: int | str | None = None,
    chunk_size: int | None = None,
) -> CostEstimate:
    """Memory (checked first: raises :class:`TooLargeError`) and a measured time estimate.

    The time probe runs a small part of the real build (a fraction of a second for the
    reference models) and is within a small factor of the build time; see
    ``benchmarks/dense.py`` for the measured ratio.
    """
    estimate = memory_estimate(
        problem, split=split, memory_budget=memory_budget, chunk_size=chunk_size
    )
    check_fits(estimate)
    chosen = resolve(problem, method)
    itemsize = estimate.matrix_bytes // (estimate.matrices * estimate.entries)
    chunk = chunk_size or default_chunk_size(problem.num_params, itemsize)
    seconds = probe_seconds(problem, chosen, split, chunk)
    return CostEstimate(**{**asdict(estimate), "seconds": seconds, "method": chosen.value})
