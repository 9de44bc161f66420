"""The distinct Ritz values of a Lanczos run without reorthogonalisation.

In floating point the three-term recurrence loses orthogonality once a Ritz value
converges (Paige 1976), and T_m then grows further copies of it, "ghosts" (Cullum &
Willoughby, "Lanczos Algorithms for Large Symmetric Eigenvalue Computations", vol. 1, 1985,
§4). A ghost first appears as a Ritz value that wanders towards the converged one and, a
few steps later, coincides with it to rounding.

What the residuals guarantee: for every Ritz pair, b_i = β_m |e_mᵀ s_i| + m ε ‖T‖ bounds
the distance from θ_i to *some* eigenvalue of A (Paige 1980, "Accuracy and effectiveness of
the Lanczos algorithm for the symmetric eigenproblem"; the second term is the rounding).
So the Ritz values are taken from the most accurate (smallest b) on, and one whose interval
[θ_j − b_j, θ_j + b_j] holds a value already taken may be a copy of it: it is counted as
one, and its own bound is returned beside that value's (``copy_bounds``) so that
``top_eigenpairs`` stops only when the copies it merged are as accurate as its tolerance
(a ghost in the making, or a distinct eigenvalue not yet resolved, holds it up).
Cullum and Willoughby's further test for "spurious" values (eigenvalues of T_m shared with
T_m less its first row and column) is not used: it misclassifies a converged eigenvalue
whose component along the start vector is below √(m ε) (a Gaussian start in N = 10⁸
dimensions has components near 10⁻⁴; float32's m ε is 10⁻⁵), and the bounds alone
already say which Ritz values approximate eigenvalues of A.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh_tridiagonal

CLUSTER_FACTOR = 10.0
"""Ritz values closer than CLUSTER_FACTOR · m · ε · ‖T‖ are copies of one value whatever
their bounds (Cullum & Willoughby 1985, §4, use a multiple of m ε ‖T‖ as their tolerance)."""


def distinct_ritz_values(
    alphas: np.ndarray, betas: np.ndarray, beta_last: float, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, bounds, copy_bounds) of T_m's Ritz values with copies merged, increasing.

    Args:
        alphas: the diagonal α_1..α_m of T_m (float64).
        betas: its off-diagonal β_1..β_{m−1}.
        beta_last: β_m, the norm of the recurrence's last residual.
        eps: the unit roundoff of the operator's dtype (its products' rounding sets how
            closely ghost copies agree).

    Returns:
        Each distinct value, its bound b_i = β_m |e_mᵀ s_i| + m ε ‖T‖ on the distance to an
        eigenvalue of A, and the largest bound among it and the copies merged into it.
    """
    m = len(alphas)
    theta, S = eigh_tridiagonal(alphas, betas)
    norm = max(float(np.max(np.abs(theta))), abs(beta_last), np.finfo(np.float64).tiny)
    bounds = abs(beta_last) * np.abs(S[-1]) + m * eps * norm
    tolerance = CLUSTER_FACTOR * m * eps * norm
    values: list[float] = []
    kept: list[float] = []
    copies: list[float] = []
    for j in np.argsort(bounds, kind="stable"):
        if values:
            distance = np.abs(np.asarray(values) - theta[j])
            nearest = int(np.argmin(distance))
            if distance[nearest] <= max(bounds[j], tolerance):
                copies[nearest] = max(copies[nearest], float(bounds[j]))
                continue
        values.append(float(theta[j]))
        kept.append(float(bounds[j]))
        copies.append(float(bounds[j]))
    order = np.argsort(values, kind="stable")
    return np.asarray(values)[order], np.asarray(kept)[order], np.asarray(copies)[order]
