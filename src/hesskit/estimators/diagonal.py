"""Hutchinson's estimate of the diagonal of any curvature operator, with standard errors.

diag(A) ≈ (1/S) Σ_s z_s ⊙ A z_s for Rademacher probes z_s (Bekas, Kokiopoulou & Saad,
"An estimator for the diagonal of a matrix", 2007). Each per-probe estimate is unbiased:
z_i (A z)_i = A_ii + Σ_{j≠i} A_ij z_i z_j, so entry i has variance Σ_{j≠i} A_ij² per probe.
Works for every operator (Hessian, GGN, Fisher); the exact Gauss-Newton diagonal, which is
cheaper per entry for small output dimension, lives in ``exact_diagonal.py``.
"""

from __future__ import annotations

import math

import torch

from hesskit.estimators.probes import check_count, make_generator, rademacher
from hesskit.estimators.result import Estimate
from hesskit.memory import check_vectors_fit
from hesskit.operators.base import CurvatureOperator
from hesskit.progress import Progress


def diagonal_vectors(chunk_size: int, dtype: torch.dtype) -> float:
    """N-vectors of ``dtype`` :func:`hutchinson_diagonal` holds at its peak: 2 float64
    accumulators, and per probe of a chunk its probe and product plus 3 float64 work
    columns (the samples, their deviations, and their squares)."""
    ratio = 8 / (torch.finfo(dtype).bits // 8)
    return 2 * ratio + chunk_size * (2 + 3 * ratio)


def hutchinson_diagonal(
    op: CurvatureOperator,
    probes: int = 100,
    *,
    chunk_size: int = 16,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool | None = None,
    memory_budget: int | str | None = None,
) -> Estimate:
    """Estimate diag(A) from ``probes`` Rademacher products, with a standard error per entry.

    Cost: ``probes`` products; memory 2N float64 numbers plus, per probe of a chunk, 2N of
    the operator's dtype and 3N float64 (:func:`diagonal_vectors`, checked against the
    budget before the first product).
    The running mean and variance use Chan et al.'s pairwise update, so no probe is stored.

    Args:
        op: the N×N operator A.
        probes: number S ≥ 2 of probes (= products).
        chunk_size: probes multiplied at once.
        generator: source of the probes; default a CPU generator seeded with ``seed``.
        seed: seed used when ``generator`` is None.
        progress: show a progress bar (None: only if it runs longer than 2 s).
        memory_budget: bytes or a size like ``"2GB"``; default
            :func:`hesskit.memory.default_memory_budget`.

    Returns:
        ``Estimate(value [N], stderr [N], products)`` in the operator's dtype; ``stderr[i]``
        is the sample standard deviation of z_i (A z)_i over the probes divided by √S.
        ``Estimate.relative_stderr()`` gives the overall ‖stderr‖ / ‖value‖.
    """
    check_count("probes", probes, 2)
    check_count("chunk_size", chunk_size, 1)
    n = op.shape[0]
    check_vectors_fit(
        n, op.dtype, diagonal_vectors(min(chunk_size, probes), op.dtype),
        what=f"hutchinson_diagonal (chunk_size = {chunk_size})",
        instead="use chunk_size=1, or a larger memory_budget", memory_budget=memory_budget,
    )
    generator = make_generator(generator, seed)
    count = 0
    mean = torch.zeros(n, dtype=torch.float64, device=op.device)
    sum_squares = torch.zeros_like(mean)  # Σ (x − mean)² over the probes so far
    with Progress("Hutchinson diagonal", probes, show=progress) as bar:
        for start in range(0, probes, chunk_size):
            size = min(chunk_size, probes - start)
            Z = rademacher((n, size), generator, op.dtype, op.device)
            samples = (Z * op.matmat(Z)).to(torch.float64)
            chunk_mean = samples.mean(dim=1)
            chunk_squares = ((samples - chunk_mean[:, None]) ** 2).sum(dim=1)
            delta = chunk_mean - mean
            total = count + size
            mean += delta * (size / total)
            sum_squares += chunk_squares + delta**2 * (count * size / total)
            count = total
            bar.advance(size)
    stderr = torch.sqrt(sum_squares / (count - 1)) / math.sqrt(count)
    return Estimate(mean.to(op.dtype), stderr.to(op.dtype), probes)
