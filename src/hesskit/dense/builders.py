"""How a dense matrix is filled: the closed form for Linear chains, or autodiff for any model.

Both fill the *lower block triangle* (rows of later parameters) of G and R, or of H, and
:func:`finish` mirrors it to the upper triangle and symmetrises the diagonal blocks, so the
result is exactly symmetric. Both also give a time probe: a short run on the user's own model
and data whose timing is extrapolated to the full build (see :mod:`hesskit.dense.cost`).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import torch
from torch import Tensor

from hesskit.dense.autodiff_columns import AutodiffColumns
from hesskit.engine.dense_blocks import LinearChainBuilder, dense_chain, finish, layer_ranges
from hesskit.errors import InvalidArgumentError, UnsupportedArchitectureError
from hesskit.problem import Problem

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while a matrix is built."""


class Method(enum.Enum):
    """How to compute the dense matrices."""

    AUTO = "auto"
    """The closed form when the engine proves a Linear/elementwise chain, autodiff otherwise."""
    LINEAR_CHAIN = "linear_chain"
    """Per-sample layer recursion and one GEMM per pair of layers (Dangel et al., 2020)."""
    AUTODIFF = "autodiff"
    """``vmap`` of forward-over-reverse products over chunks of basis vectors (any model)."""


def resolve(problem: Problem, method: Method | str) -> Method:
    """The concrete method for ``problem`` (AUTO picks the fastest that applies)."""
    try:
        method = Method(method)
    except ValueError:
        raise InvalidArgumentError(
            f"unknown method {method!r}; use one of {', '.join(m.value for m in Method)}"
        ) from None
    if method is Method.AUTODIFF:
        return method
    try:
        dense_chain(problem)
    except UnsupportedArchitectureError as reason:
        if method is Method.LINEAR_CHAIN:
            raise InvalidArgumentError(
                f"method 'linear_chain' does not apply: {reason}; use method='autodiff'"
            ) from None
        return Method.AUTODIFF
    return Method.LINEAR_CHAIN


def groups(problem: Problem, method: Method) -> list[slice]:
    """Contiguous index ranges whose lower block triangle the method fills."""
    layout = problem.layout
    if method is Method.AUTODIFF:
        return [layout.slice(name) for name in layout.names]
    return layer_ranges(problem, dense_chain(problem))


def fill(
    problem: Problem,
    method: Method,
    gauss_newton: Tensor,
    residual: Tensor,
    split: bool,
    chunk_size: int,
    progress: Progress | None = None,
) -> None:
    """Fill the lower block triangle. Without ``split``, pass the same tensor twice (H)."""
    if method is Method.LINEAR_CHAIN:
        builder = LinearChainBuilder(problem)
        batches = list(problem.batches())
        for done, batch in enumerate(batches, start=1):
            builder.add_batch(batch.inputs, batch.targets, batch.weight, gauss_newton, residual)
            if progress:
                progress(done, len(batches))
        return
    columns = AutodiffColumns(problem)
    layout, total, done = problem.layout, problem.num_params, 0
    for block, name in enumerate(layout.names):
        where, rows = layout.slice(name), slice(layout.offsets[block], total)
        for start in range(0, layout.sizes[block], chunk_size):
            stop = min(start + chunk_size, layout.sizes[block])
            cols = slice(where.start + start, where.start + stop)
            with torch.no_grad():
                parts = columns.columns(block, start, stop, split)
            if split:
                gauss_newton[rows, cols] = parts["G"].T
                residual[rows, cols] = parts["R"].T
            else:
                gauss_newton[rows, cols] = parts["H"].T
            done += stop - start
            if progress:
                progress(done, total)


def probe_seconds(problem: Problem, method: Method, split: bool, chunk_size: int) -> float:
    """Predicted build time, from timing a small part of the build on this model and data.

    Linear chain: two runs of one batch's blocks on 8 and 32 of its samples fit
    t(n) = a + b·n (a: writing N² entries, b: the GEMMs), summed over the batches, plus the
    timed mirroring. Autodiff: one chunk of at most ``chunk_size // 4`` columns per parameter
    block, scaled by the block's number of columns.
    """
    n, dtype, device = problem.num_params, problem.dtype, problem.device
    if method is Method.LINEAR_CHAIN:
        builder = LinearChainBuilder(problem)
        first = next(problem.batches())
        scratch = torch.zeros(n, n, dtype=dtype, device=device)
        other = torch.zeros_like(scratch) if split else scratch
        small, large = min(first.num_samples, 8), min(first.num_samples, 32)
        timings = []
        for samples in (small, small, large):  # the first run warms up
            started = time.perf_counter()
            builder.add_batch(first.inputs, first.targets, 1.0, scratch, other, samples)
            timings.append(time.perf_counter() - started)
        slope = max(timings[2] - timings[1], 0.0) / (large - small) if large > small else 0.0
        fixed = max(timings[1] - slope * small, 0.0)
        started = time.perf_counter()
        finish(scratch, groups(problem, method))
        if split:
            torch.add(scratch, other, out=other)
        finishing = time.perf_counter() - started
        return sum(fixed + slope * batch.num_samples for batch in problem.batches()) + finishing
    columns = AutodiffColumns(problem)
    layout = problem.layout
    width = max(1, chunk_size // 4)
    with torch.no_grad():
        columns.columns(0, 0, 1, split)  # warm-up: vmap and autograd set-up
        total = 0.0
        for block, size in enumerate(layout.sizes):
            count = min(size, width)
            started = time.perf_counter()
            columns.columns(block, 0, count, split)
            total += (time.perf_counter() - started) * size / count
    return total
