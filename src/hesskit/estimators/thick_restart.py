"""Lanczos on a bounded basis: thick restarts (Wu & Simon 2000), for top-k at any N.

The Lanczos relation with full reorthogonalisation on a basis Q_m (m orthonormal columns),

    A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ,        T_m = Q_mᵀ A Q_m  (m × m, symmetric),

needs m + 1 vectors of N numbers. When the basis is full (``max_vectors`` rows), the
*thick restart* of Wu & Simon ("Thick-restart Lanczos method for large symmetric
eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2), 2000, §3) keeps the l Ritz
vectors y_i = Q_m s_i nearest the wanted end and the residual direction q_{m+1}:

    A Y_l = Y_l diag(θ_1..θ_l) + q_{m+1} bᵀ,   b_i = β_m e_mᵀ s_i,

so the Lanczos relation holds again with m = l, T_l = diag(θ) (an arrowhead once the next
step adds the column b). The recurrence continues from q_{m+1}; every Ritz pair keeps the
residual ‖A Q_m s − θ Q_m s‖ = β_m |e_mᵀ s| (Parlett §13.1) after the first step past a
restart. It is mathematically the implicitly restarted Lanczos of ARPACK with exact
shifts at the discarded Ritz values (Wu & Simon §3; Sorensen 1992).

Here T_m is taken from the Gram-Schmidt coefficients Q_mᵀ A q_m (the new column, two
passes of classical Gram-Schmidt: "twice is enough", Giraud et al. 2005), which equal
the arrowhead/tridiagonal entries of Wu & Simon in exact arithmetic and need no special
case after a restart. The rotation Q_m → Y_l is done in place, a slice of the columns at a
time, so the memory is ``max_vectors`` + 2 N-vectors throughout (:data:`WORK_VECTORS`).
Cost: one product per step; O(m · N) flops per step for reorthogonalisation and
O(m · l · N) per restart.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError, NonFiniteError
from hesskit.operators.base import CurvatureOperator

WORK_VECTORS = 2
"""N-vectors besides the basis: the product A q, and the column slices of a restart."""


class ThickRestartLanczos:
    """One Lanczos recurrence on a basis of at most ``max_vectors`` rows of N numbers.

    After each :meth:`step`, ``size`` = m is the dimension of the Ritz space (rows
    ``basis[:m]``), row m holds q_{m+1} (zero after a breakdown until
    :meth:`continue_with` supplies a vector), ``projected()`` is T_m and ``beta`` is β_m.
    :meth:`restart` must be called before a step when ``full`` is True.
    """

    def __init__(self, op: CurvatureOperator, start: Tensor, max_vectors: int) -> None:
        if max_vectors < 2:
            raise InvalidArgumentError(f"max_vectors must be at least 2, got {max_vectors}")
        norm = torch.linalg.vector_norm(start)
        if not float(norm) > 0:
            raise InvalidArgumentError("a Lanczos start vector is zero; use a non-zero vector")
        self.op = op
        n = op.shape[0]
        self.basis = torch.zeros(max_vectors, n, dtype=op.dtype, device=op.device)
        self.basis[0] = (start / norm).to(op.dtype)
        self._T = np.zeros((max_vectors, max_vectors))
        self.size = 0
        self.beta = 0.0
        self.products = 0
        self.restarts = 0
        self.broke_down = False
        self._scale = 0.0

    @property
    def full(self) -> bool:
        """No row left for q_{m+2}: the next step needs a :meth:`restart` first."""
        return self.size + 1 >= self.basis.shape[0]

    def projected(self) -> np.ndarray:
        """T_m = Q_mᵀ A Q_m, float64 ``[m, m]`` (a copy)."""
        m = self.size
        return self._T[:m, :m].copy()

    def step(self) -> float:
        """One product: extend the basis by q_{m+1}; returns β_m = ‖residual‖."""
        m = self.size
        if m + 1 >= self.basis.shape[0]:
            raise RuntimeError("the Lanczos basis is full; call restart() first")
        w = self.op.matmat(self.basis[m][:, None])[:, 0]
        if w.untyped_storage().data_ptr() == self.basis.untyped_storage().data_ptr():
            w = w.clone()  # an operator that returned (a view of) its input
        self.products += 1
        if not bool(torch.isfinite(w).all()):
            raise NonFiniteError(
                "the operator returned a non-finite product; check the model's loss and parameters"
            )
        Q = self.basis[: m + 1]
        coefficients = torch.zeros(m + 1, dtype=torch.float64, device=w.device)
        for _ in range(2):  # classical Gram-Schmidt twice (Giraud et al. 2005)
            h = Q @ w
            w.addmv_(Q.T, h, alpha=-1)
            coefficients += h.to(torch.float64)
        column = coefficients.cpu().numpy()
        self._T[: m + 1, m] = column
        self._T[m, : m + 1] = column
        beta = float(torch.linalg.vector_norm(w))
        self._scale = max(self._scale, abs(float(column[m])), beta)
        threshold = torch.finfo(self.op.dtype).eps ** (2 / 3) * self._scale
        self.size = m + 1
        self.broke_down = beta <= threshold or self.size >= self.op.shape[0]
        if self.broke_down:
            self.basis[m + 1].zero_()
        else:
            self.basis[m + 1].copy_(w).div_(beta)
        self.beta = beta
        return beta

    def continue_with(self, vector: Tensor) -> bool:
        """After a breakdown, continue from ``vector`` made orthogonal to the basis.

        T gets no coupling to it (the Krylov space so far is invariant). Returns False when
        nothing of ``vector`` is left (the basis spans the whole space).
        """
        m = self.size
        Q = self.basis[:m]
        v = vector.to(self.op.dtype).clone()
        for _ in range(2):
            v.addmv_(Q.T, Q @ v, alpha=-1)
        norm = torch.linalg.vector_norm(v)
        eps = torch.finfo(self.op.dtype).eps
        if float(norm) <= math.sqrt(eps) * float(torch.linalg.vector_norm(vector)):
            return False
        self.basis[m].copy_(v).div_(norm)
        self.beta = 0.0
        self.broke_down = False
        return True

    def restart(self, coefficients: np.ndarray, values: np.ndarray) -> None:
        """Thick restart: keep Y_l = Q_m S_l (S_l ``[m, l]`` orthonormal eigenvectors of T_m
        for the Ritz values ``values``) and q_{m+1}; T becomes diag(θ_l)."""
        m, l = self.size, coefficients.shape[1]
        if not 1 <= l < m:
            raise InvalidArgumentError(f"a thick restart keeps 1 to m - 1 = {m - 1} vectors")
        S = torch.as_tensor(coefficients.T, dtype=self.op.dtype, device=self.basis.device)
        n = self.basis.shape[1]
        width = max(1, math.ceil(n / self.basis.shape[0]))  # l × width ≤ one N-vector
        for start in range(0, n, width):
            columns = slice(start, min(start + width, n))
            self.basis[:l, columns] = S @ self.basis[:m, columns]
        self.basis[l].copy_(self.basis[m])
        self.basis[l + 1 :].zero_()
        self._T[:] = 0.0
        self._T[np.arange(l), np.arange(l)] = values
        self.size = l
        self.restarts += 1

    def ritz_vectors(self, coefficients: np.ndarray) -> Tensor:
        """Q_m S, ``[N, j]`` for ``coefficients`` S ``[m, j]``: j new N-vectors."""
        S = torch.as_tensor(coefficients, dtype=self.op.dtype, device=self.basis.device)
        return self.basis[: self.size].T @ S
