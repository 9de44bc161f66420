"""One scope of the preconditioner analysis: P against G on the model or one layer's block.

The numbers (definitions: :mod:`hesskit.analysis.preconditioner` and
``preconditioner_records.DEFINITIONS``): the spectrum of P^{-1/2} G P^{-1/2} and of G by
Lanczos (the top k, and both ends of the damped P^{-1/2}(G + λI)P^{-1/2}), the damped
Newton direction by conjugate gradient and the optimizer's directions against it, and for
diagonal P the rank correlation, cosine and scale against curvature diagonals (the
functions of :mod:`hesskit.analysis.rmsprop`). Every function here takes operators
(any ``CurvatureOperator``: tests pass explicit matrices), never a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.analysis.preconditioner_adapters import (
    Preconditioner,
    PreconditionerKind,
    identity_preconditioner,
)
from hesskit.analysis.preconditioner_records import (
    DiagonalComparison,
    Direction,
    Newton,
    ScopeRecord,
    Spectrum,
)
from hesskit.analysis.rmsprop import cosine, scale, spearman
from hesskit.errors import InvalidArgumentError
from hesskit.estimators.lanczos import top_eigenpairs
from hesskit.operators import CurvatureOperator, damped
from hesskit.operators.powers import SandwichOperator
from hesskit.solvers import conjugate_gradient


@dataclass(frozen=True)
class AnalysisSettings:
    """How each record is measured.

    Attributes:
        damping: λ > 0 of G + λI in the damped condition number, the Newton direction and m.
        top_k: k of the top-k spread (at most a scope's size; a smaller scope uses all).
        tol: Lanczos' relative eigenvalue tolerance.
        max_products: Lanczos' product budget per run.
        cg_rtol, cg_maxiter: the Newton solve's residual tolerance and iteration cap.
        per_layer: also measure each layer's block.
        probes: Hutchinson probes where diag H cannot be exact.
        seed: seed of the Lanczos start vectors.
    """

    damping: float = 1e-3
    top_k: int = 5
    tol: float = 1e-3
    max_products: int = 200
    cg_rtol: float = 1e-6
    cg_maxiter: int = 500
    per_layer: bool = True
    probes: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.damping) and self.damping > 0):
            raise InvalidArgumentError(f"damping must be a finite number > 0, got "
                                       f"{self.damping}; pass e.g. 1e-3")
        if min(self.top_k, self.max_products, self.cg_maxiter, self.probes) < 1:
            raise InvalidArgumentError("top_k, max_products, cg_maxiter and probes must be ≥ 1")


def spectrum(curvature: CurvatureOperator, P: Preconditioner,
             settings: AnalysisSettings) -> Spectrum:
    """Top k of P^{-1/2} G P^{-1/2} and both ends of P^{-1/2}(G + λI)P^{-1/2} (module
    docstring; for P = I the damped largest is λ₁ + λ exactly, one Lanczos run fewer)."""
    identity = P.kind is PreconditionerKind.IDENTITY
    n = curvature.shape[0]
    k = min(settings.top_k, n)
    budget = {"tol": settings.tol, "max_products": max(settings.max_products, k),
              "seed": settings.seed, "progress": False}

    def outer(op: CurvatureOperator) -> CurvatureOperator:
        return op if identity else SandwichOperator(P.inverse_sqrt, op)

    top = top_eigenpairs(outer(curvature), k, **budget)
    shifted = outer(damped(curvature, settings.damping))
    smallest = top_eigenpairs(shifted, 1, which="smallest", **budget)
    products = top.products + smallest.products
    if identity:
        largest, largest_ok = float(top.values[0]) + settings.damping, top.converged
    else:
        result = top_eigenpairs(shifted, 1, **budget)
        largest, largest_ok = float(result.values[0]), result.converged
        products += result.products
    values = [float(v) for v in top.values]
    low = float(smallest.values[0])
    return Spectrum(
        top=values, top_converged=top.converged,
        condition_top_k=values[0] / values[-1] if values[-1] > 0 else math.nan,
        damped_largest=largest, damped_smallest=low,
        damped_converged=largest_ok and smallest.converged,
        condition_damped=largest / low if low > 0 else math.nan, products=products,
    )


def _direction(g: Tensor, d: Tensor, Bd: Tensor, d_newton: Tensor,
               newton_value: float) -> Direction:
    """d against d_N: the cosine, and m at the best scale on d's line and as taken, each
    divided by m(d_N) (module docstring; undefined when m(d_N) = 0, i.e. g = 0)."""
    gd, dBd = float(g @ d), float(d @ Bd)
    taken = gd + 0.5 * dBd
    line = -(gd * gd) / (2 * dBd) if dBd > 0 else math.nan

    def ratio(value: float) -> float:
        return value / newton_value if newton_value < 0 else math.nan

    return Direction(cosine(d, d_newton), ratio(line), ratio(taken), taken)


def directions(curvature: CurvatureOperator, P: Preconditioner, g: Tensor, step: Tensor,
               settings: AnalysisSettings) -> tuple[Newton, Direction, Direction]:
    """The Newton solve and the two optimizer directions (−P⁻¹g, the step) against it."""
    B = damped(curvature, settings.damping)
    solve = conjugate_gradient(B, -g, rtol=settings.cg_rtol, maxiter=settings.cg_maxiter)
    d_newton = solve.x
    d_pre = -P.inverse.matvec(g)
    columns = torch.stack([d_newton, d_pre, step.to(g.dtype)], dim=1)
    products = B.matmat(columns)
    newton_value = float(g @ d_newton) + 0.5 * float(d_newton @ products[:, 0])
    norm = float(g.norm())
    residual = float((products[:, 0] + g).norm()) / norm if norm > 0 else 0.0
    newton = Newton(newton_value, solve.iterations, solve.status.name.lower(), residual)
    pre = _direction(g, d_pre, products[:, 1], d_newton, newton_value)
    taken = _direction(g, columns[:, 2], products[:, 2], d_newton, newton_value)
    return newton, pre, taken


def compare_scope(layer: str, curvature: CurvatureOperator, P: Preconditioner, g: Tensor,
                  step: Tensor, settings: AnalysisSettings,
                  diagonals: dict[str, Tensor] | None = None) -> ScopeRecord:
    """All numbers of one scope: G (``curvature``, the scope's block), P restricted to it,
    g and the step's part on it, and (diagonal P) the curvature diagonals on it."""
    newton, pre, taken = directions(curvature, P, g, step, settings)
    identity = P.kind is PreconditionerKind.IDENTITY
    own = spectrum(curvature, _identity_like(P), settings) if not identity else None
    pre_spectrum = spectrum(curvature, P, settings)
    comparisons = []
    if diagonals is not None and P.diagonal is not None and not identity:
        comparisons = [DiagonalComparison(kind, spearman(P.diagonal, d),
                                          cosine(P.diagonal, d), scale(P.diagonal, d))
                       for kind, d in diagonals.items()]
    return ScopeRecord(layer, curvature.shape[0], own or pre_spectrum, pre_spectrum, newton,
                       pre, taken, comparisons)


def _identity_like(P: Preconditioner) -> Preconditioner:
    op = P.matrix
    return identity_preconditioner(op.layout, op.dtype, op.device)
