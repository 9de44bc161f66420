"""Ritz values of a Lanczos run: which are wanted, their error bounds, the stopping test.

Shared by ``top_eigenpairs``' two paths (``lanczos.py``): the reorthogonalised basis and
the three-term recurrence. The bounds are those its docstring states: the residual
r_i = β_m |e_mᵀ s_i| (Weyl) and r_i² / gap_i (Kato-Temple; Parlett §11.7).
"""

from __future__ import annotations

import numpy as np
import torch

from hesskit.estimators.result import Eigenpairs
from hesskit.operators.base import CurvatureOperator


def eigenpairs_result(
    values: np.ndarray,
    vectors: torch.Tensor | None,
    products: int,
    residuals: np.ndarray,
    converged: bool,
    bounds: np.ndarray,
    op: CurvatureOperator,
) -> Eigenpairs:
    """The result, its numbers in the operator's dtype."""
    return Eigenpairs(
        values=torch.as_tensor(values, dtype=op.dtype),
        vectors=vectors,
        products=products,
        residuals=torch.as_tensor(residuals, dtype=op.dtype),
        converged=bool(converged),
        error_bounds=torch.as_tensor(bounds, dtype=op.dtype),
    )


def wanted_ritz_pairs(
    T: np.ndarray, beta: float, k: int, sign: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The k Ritz values nearest the wanted end, their T-eigenvectors, residuals and
    eigenvalue error bounds min(r_i, r_i² / gap_i)."""
    theta, S = np.linalg.eigh(T)
    residuals = abs(beta) * np.abs(S[-1])
    order = np.argsort(-sign * theta, kind="stable")[:k]
    bounds = np.array([error_bound(theta, residuals, i) for i in order])
    return theta[order], S[:, order], residuals[order], bounds


def error_bound(theta: np.ndarray, residuals: np.ndarray, i: int) -> float:
    """min(r_i, r_i² / gap_i), gap_i = min_{j≠i} (|θ_i − θ_j| − r_j) (Kato-Temple)."""
    others = np.delete(np.arange(len(theta)), i)
    if len(others) == 0:
        return float(residuals[i])
    gap = float(np.min(np.abs(theta[i] - theta[others]) - residuals[others]))
    if gap <= 0:
        return float(residuals[i])
    return float(min(residuals[i], residuals[i] ** 2 / gap))


def unchanged_at_breakdown(
    values: np.ndarray, before: np.ndarray | None, k: int, T: np.ndarray, op: CurvatureOperator
) -> bool:
    """At a breakdown (an invariant subspace): did the Krylov block just exhausted leave the
    k wanted Ritz values as they were at the previous breakdown? Its eigenvalues are
    (generically) all the distinct eigenvalues of A on the complement of the earlier
    blocks, so if none of them is among the k best, no further block holds one either."""
    if before is None or len(before) < k or len(values) < k:
        return False
    scale = max(float(np.max(np.abs(np.diag(T)))), float(np.max(np.abs(values))))
    return bool(np.all(np.abs(values - before) <= torch.finfo(op.dtype).eps ** (2 / 3) * scale))


def meets_tolerance(
    values: np.ndarray,
    bounds: np.ndarray,
    tol: float,
    diagonal: np.ndarray,
    op: CurvatureOperator,
) -> bool:
    scale = max(float(np.max(np.abs(values))), float(np.max(np.abs(diagonal))))
    floor = torch.finfo(op.dtype).eps ** (2 / 3) * scale
    return bool(np.all(bounds <= tol * np.maximum(np.abs(values), floor)))
