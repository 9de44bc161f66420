"""Trace of a curvature operator: Hutchinson, Hutch++ and the exact sum of diagonal entries.

Costs are counted in curvature-vector products (columns of ``op.matmat``); one product costs
about two gradients for the Hessian.

* ``hutchinson_trace``: tr(A) ≈ (1/S) Σ_s z_sᵀ A z_s with Rademacher z_s (Hutchinson 1989).
  Unbiased; variance per probe 2 Σ_{i≠j} A_ij² = 2(‖A‖_F² − Σ_i A_ii²).
* ``hutchpp_trace``: Hutch++ (Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal Stochastic
  Trace Estimation", SOSA 2021, Algorithm 1). A third of the budget sketches the dominant
  range Q = orth(A S), tr(Qᵀ A Q) is computed exactly, and Hutchinson estimates the trace
  of the deflated remainder (I − QQᵀ) A (I − QQᵀ). Much lower variance when A has a few
  large eigenvalues, as network Hessians do.
* ``exact_trace``: Σ_i e_iᵀ A e_i, N products: for tests and small models.

Memory, checked against the budget of :mod:`hesskit.memory` before the first product:
Hutchinson 3 · ``chunk_size`` N-vectors (a probe block, its product, their elementwise
product); Hutch++ 4 N-vectors per product of its budget (sketch, its product, the SVD's
factor and work; then Q, A Q beside the residual probes and their products); the exact
trace 3 · ``chunk_size``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hesskit.errors import NonFiniteError
from hesskit.estimators.probes import check_count, gaussian, make_generator, rademacher
from hesskit.estimators.result import Estimate
from hesskit.memory import check_vectors_fit
from hesskit.operators.base import CurvatureOperator
from hesskit.progress import Progress

HUTCHPP_VECTORS_PER_PRODUCT = 4
"""N-vectors Hutch++ holds per product of its budget, at its peak (see the module docstring)."""


def hutchinson_trace(
    op: CurvatureOperator,
    probes: int = 100,
    *,
    chunk_size: int = 16,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool | None = None,
    memory_budget: int | str | None = None,
) -> Estimate:
    """Hutchinson's estimate of tr(A) with its standard error, using ``probes`` products.

    Args:
        op: the N×N operator A.
        probes: number S ≥ 2 of Rademacher probe vectors (= products).
        chunk_size: probes multiplied at once (memory N × chunk_size).
        generator: source of the probes; default a CPU generator seeded with ``seed``.
        seed: seed used when ``generator`` is None.
        progress: show a progress bar (None: only if it runs longer than 2 s).
        memory_budget: bytes or a size like ``"2GB"`` for its 3 · chunk_size N-vectors;
            default :func:`hesskit.memory.default_memory_budget`.

    Returns:
        ``Estimate(value, stderr, products)`` with stderr = std(z_sᵀ A z_s) / √S.
    """
    check_count("probes", probes, 2)
    check_count("chunk_size", chunk_size, 1)
    check_vectors_fit(
        op.shape[0], op.dtype, 3 * min(chunk_size, probes),
        what=f"hutchinson_trace (chunk_size = {chunk_size})",
        instead="use chunk_size=1 (3 N-vectors), or a larger memory_budget",
        memory_budget=memory_budget,
    )
    generator = make_generator(generator, seed)
    samples = _quadratic_forms(op, probes, chunk_size, generator, progress, "Hutchinson trace")
    return Estimate(float(samples.mean()), _stderr(samples), probes)


def hutchpp_trace(
    op: CurvatureOperator,
    products: int = 60,
    *,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool | None = None,
    memory_budget: int | str | None = None,
) -> Estimate:
    """Hutch++ estimate of tr(A) within a budget of ``products`` curvature-vector products.

    Meyer et al. (2021), Algorithm 1: with s = ⌊products/3⌋ and g = products − 2s,
    Q = orth(A S) for a Gaussian sketch S ∈ R^{N×s} (the paper allows sign or Gaussian
    sketches; Gaussian columns are independent almost surely, sign columns can repeat
    in small N), and Rademacher residual probes z_j; tr(A) ≈ tr(Qᵀ A Q) + (1/g) Σ_j g_jᵀ A g_j with
    g_j = (I − QQᵀ) z_j. The first term is exact given Q, so the standard error is that of the
    residual Hutchinson part: std(g_jᵀ A g_j) / √g, conditional on the sketch.

    Args:
        op: the N×N symmetric operator A.
        products: the budget, at least 6 (so that s ≥ 2 and g ≥ 2).
        generator: source of the probes; default a CPU generator seeded with ``seed``.
        seed: seed used when ``generator`` is None.
        progress: show a progress bar (None: only if it runs longer than 2 s).
        memory_budget: bytes or a size like ``"2GB"`` for its 4 · products N-vectors;
            default :func:`hesskit.memory.default_memory_budget`.

    Returns:
        ``Estimate(value, stderr, products)``; ``products`` may be below the budget when the
        sketch has rank < s (then A Q needs fewer columns) or spans all of R^N (then the
        result is exact and the residual probes are skipped).
    """
    check_count("products", products, 6)
    n = op.shape[0]
    check_vectors_fit(
        n, op.dtype, HUTCHPP_VECTORS_PER_PRODUCT * products,
        what=f"hutchpp_trace ({products} products)",
        instead="use fewer products, or hutchinson_trace with chunk_size=1 (3 N-vectors)",
        memory_budget=memory_budget,
    )
    generator = make_generator(generator, seed)
    sketch_size = products // 3
    residual_probes = products - 2 * sketch_size
    with Progress("Hutch++ trace", products, show=progress) as bar:
        S = gaussian((n, sketch_size), generator, op.dtype, op.device)
        Q = _orthonormal_range(op.matmat(S))
        bar.advance(sketch_size)
        AQ = op.matmat(Q) if Q.shape[1] else torch.zeros_like(Q)
        bar.advance(Q.shape[1])
        exact_part = float((Q * AQ).sum(dtype=torch.float64))
        used = sketch_size + Q.shape[1]
        if Q.shape[1] == n:
            return Estimate(exact_part, 0.0, used)
        G = rademacher((n, residual_probes), generator, op.dtype, op.device)
        G = G - Q @ (Q.T @ G)
        samples = (G * op.matmat(G)).sum(dim=0, dtype=torch.float64)
        bar.advance(residual_probes)
    return Estimate(exact_part + float(samples.mean()), _stderr(samples), used + residual_probes)


def exact_trace(
    op: CurvatureOperator, *, chunk_size: int = 256, memory_budget: int | str | None = None
) -> Estimate:
    """tr(A) = Σ_i e_iᵀ A e_i from N products, in chunks of ``chunk_size`` unit vectors.

    For tests and small models only: it costs as much as building the dense matrix, but
    holds only N × chunk_size numbers at a time. The standard error is 0.
    """
    check_count("chunk_size", chunk_size, 1)
    n = op.shape[0]
    check_vectors_fit(
        n, op.dtype, 3 * min(chunk_size, n), what=f"exact_trace (chunk_size = {chunk_size})",
        instead="use a smaller chunk_size, or hutchinson_trace", memory_budget=memory_budget,
    )
    total = 0.0
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        columns = torch.arange(start, stop, device=op.device)
        eye = torch.zeros(n, stop - start, dtype=op.dtype, device=op.device)
        eye[columns, torch.arange(stop - start, device=op.device)] = 1
        total += float(op.matmat(eye)[columns, torch.arange(stop - start)].sum(dtype=torch.float64))
    return Estimate(total, 0.0, n)


def _quadratic_forms(
    op: CurvatureOperator,
    probes: int,
    chunk_size: int,
    generator: torch.Generator,
    progress: bool | None,
    description: str,
) -> Tensor:
    """z_sᵀ A z_s for ``probes`` Rademacher vectors, as a float64 tensor ``[probes]``."""
    n = op.shape[0]
    values = []
    with Progress(description, probes, show=progress) as bar:
        for start in range(0, probes, chunk_size):
            count = min(chunk_size, probes - start)
            Z = rademacher((n, count), generator, op.dtype, op.device)
            values.append((Z * op.matmat(Z)).sum(dim=0, dtype=torch.float64))
            bar.advance(count)
    return torch.cat(values).cpu()


def _stderr(samples: Tensor) -> float:
    """Sample standard deviation (ddof 1) over √(number of samples)."""
    return float(samples.std(correction=1)) / math.sqrt(samples.numel())


def _orthonormal_range(Y: Tensor) -> Tensor:
    """An orthonormal basis of range(Y), dropping directions below rounding (SVD, not QR)."""
    if not torch.isfinite(Y).all():
        raise NonFiniteError(
            "the operator returned non-finite products; check the model's loss and parameters"
        )
    U, sigma, _ = torch.linalg.svd(Y, full_matrices=False)
    if sigma.numel() == 0 or float(sigma[0]) == 0:
        return U[:, :0]
    eps = torch.finfo(Y.dtype).eps
    rank = int((sigma > sigma[0] * eps * max(Y.shape)).sum())
    return U[:, :rank]
