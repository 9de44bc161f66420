"""P Lanczos recurrences at once: with a stored, reorthogonalised basis, or three-term.

Both run P independent recurrences A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ, one ``matmat`` of P
columns per step, and record T_m (α, β):

* :class:`LanczosRecurrence` reorthogonalises each new vector against its whole basis
  (classical Gram-Schmidt, twice: "twice is enough", Giraud et al. 2005). Memory:
  P · (m + 1) · N numbers, grown by doubling (so up to 1.5× that during a copy:
  :func:`basis_vectors`). Used by SLQ with ``reorthogonalize=True``.
* :class:`ThreeTermRecurrence` keeps q_{j−1}, q_j and A q_j only (:data:`THREE_TERM_VECTORS`
  · P N-vectors whatever m): the recurrence as Lanczos wrote it, which loses orthogonality
  once a Ritz value converges (Paige 1976). Used by SLQ with ``reorthogonalize=False`` and
  by ``top_eigenpairs`` with ``reorthogonalize=False`` (spurious and ghost Ritz values
  removed there: ``ghost_filter.py``).

For eigenvectors at scale, see the bounded basis of ``thick_restart.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError, NonFiniteError
from hesskit.operators.base import CurvatureOperator

THREE_TERM_VECTORS = 5
"""N-vectors per recurrence :class:`ThreeTermRecurrence` holds at its peak: q_{j−1}, q_j,
A q_j and the operator's copies of its argument and result."""

INITIAL_ROWS = 8
"""Rows of the basis allocated first; it doubles when full."""


DOT_CHUNK = 2**16
"""Rows per slice in :func:`column_dots` (a float64 slice of 512 KB per column)."""


def column_dots(a: Tensor, b: Tensor) -> Tensor:
    """Σ_i a_ip b_ip for each column p of ``[N, P]`` tensors, accumulated in float64.

    Done a slice of rows at a time, so the temporary is DOT_CHUNK × P numbers, not N × P
    (``(a * b).sum(dtype=torch.float64)`` holds the product and its float64 copy).
    """
    total = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[0], DOT_CHUNK):
        rows = slice(start, start + DOT_CHUNK)
        total += (a[rows] * b[rows]).sum(dim=0, dtype=torch.float64)
    return total


def basis_vectors(probes: int, steps: int) -> int:
    """N-vectors a :class:`LanczosRecurrence` of ``steps`` steps holds at its peak: the
    basis of R ≥ steps + 1 rows (doubled from 8) beside the old R/2 rows during the copy,
    plus 3 per probe for the product and the Gram-Schmidt work."""
    rows = INITIAL_ROWS
    while rows < steps + 1:
        rows *= 2
    grown = rows + rows // 2 if rows > INITIAL_ROWS else rows
    return probes * (grown + 3)


class LanczosRecurrence:
    """P independent Lanczos recurrences with full reorthogonalisation, one product each per step.

    After m calls of :meth:`step`, ``tridiagonal(p)`` is T_m of recurrence p and
    ``basis[p, :m]`` holds q_1 … q_m as rows. A β_m ≤ ε^{2/3}·max(|α|, β) (the Krylov space
    is exhausted: an invariant subspace to that accuracy), or m = N, is recorded in
    ``broke_down``; the next basis vector is then 0 unless :meth:`restart` supplies one.
    """

    def __init__(self, op: CurvatureOperator, start: Tensor) -> None:
        norms = torch.linalg.vector_norm(start, dim=0)
        if not bool((norms > 0).all()):
            raise InvalidArgumentError("a Lanczos start vector is zero; use a non-zero vector")
        self.op = op
        self.steps = 0
        self.alphas: list[Tensor] = []  # α_j = q_jᵀ A q_j, float64 [P]
        self.betas: list[Tensor] = []  # β_j = ‖residual of step j‖, float64 [P]
        self.broke_down = torch.zeros(start.shape[1], dtype=torch.bool)
        self._scale = torch.zeros(start.shape[1], dtype=torch.float64)
        self.basis = torch.zeros(
            start.shape[1], INITIAL_ROWS, start.shape[0], dtype=op.dtype, device=op.device
        )
        self.basis[:, 0] = (start / norms).T.to(op.dtype)

    def step(self) -> Tensor:
        """One product per recurrence; returns β_m (float64 ``[P]``)."""
        j = self.steps
        self._reserve(j + 2)
        q = self.basis[:, j]
        w = self.op.matmat(q.T.contiguous()).T
        if not bool(torch.isfinite(w).all()):
            raise NonFiniteError(
                "the operator returned a non-finite product; check the model's loss and parameters"
            )
        alpha = (q * w).sum(dim=1, dtype=torch.float64)
        w = w - alpha.to(w.dtype)[:, None] * q
        if j > 0:
            w = w - self.betas[-1].to(w.dtype)[:, None] * self.basis[:, j - 1]
        w = orthogonalize(w, self.basis[:, : j + 1])
        beta = torch.linalg.vector_norm(w, dim=1).to(torch.float64)
        self._scale = torch.maximum(self._scale, torch.maximum(alpha.abs(), beta).cpu())
        threshold = torch.finfo(self.op.dtype).eps ** (2 / 3) * self._scale
        self.broke_down = (beta.cpu() <= threshold) | (j + 1 >= self.op.shape[0])
        keep = ~self.broke_down.to(beta.device)
        safe = torch.where(keep, beta, torch.ones_like(beta)).to(w.dtype)
        self.basis[:, j + 1] = torch.where(keep[:, None], w / safe[:, None], 0)
        self.alphas.append(alpha)
        self.betas.append(beta)
        self.steps += 1
        return beta

    def restart(self, index: int, vector: Tensor) -> bool:
        """Continue recurrence ``index`` from ``vector`` made orthogonal to its basis.

        Returns False when nothing of ``vector`` is left (the basis spans the whole space).
        """
        m = self.steps
        v = orthogonalize(vector.to(self.op.dtype)[None], self.basis[index : index + 1, :m])[0]
        norm = torch.linalg.vector_norm(v)
        if float(norm) <= math.sqrt(torch.finfo(self.op.dtype).eps) * float(
            torch.linalg.vector_norm(vector)
        ):
            return False
        self.basis[index, m] = v / norm
        self.betas[-1][index] = 0.0  # the new vector is not coupled to the old block
        return True

    def tridiagonal(self, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(diagonal α_1..α_m, off-diagonal β_1..β_{m-1}) of T_m for recurrence ``index``."""
        alphas = np.array([float(a[index]) for a in self.alphas])
        betas = np.array([float(b[index]) for b in self.betas[:-1]])
        return alphas, betas

    def _reserve(self, rows: int) -> None:
        if rows > self.basis.shape[1]:
            grown = torch.zeros(
                self.basis.shape[0], max(rows, 2 * self.basis.shape[1]), self.basis.shape[2],
                dtype=self.basis.dtype, device=self.basis.device,
            )
            grown[:, : self.basis.shape[1]] = self.basis
            self.basis = grown


def orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
    """w − Q(Qᵀw) twice, for batches: w ``[P, N]``, basis rows ``[P, m, N]``."""
    for _ in range(2):
        coefficients = torch.bmm(basis, w[:, :, None])
        w = w - torch.bmm(basis.transpose(1, 2), coefficients)[:, :, 0]
    return w


class ThreeTermRecurrence:
    """P plain Lanczos recurrences, keeping only q_{j−1}, q_j and A q_j per recurrence:

        w = A q_j − α_j q_j − β_{j−1} q_{j−1},  α_j = q_jᵀ A q_j,  β_j = ‖w‖,  q_{j+1} = w / β_j.

    A recurrence stops (``done``; its T has ``lengths[p]`` rows) at β_j ≤ ε^{2/3} ·
    max(|α|, β), as :class:`LanczosRecurrence` does; the others go on.
    """

    def __init__(self, op: CurvatureOperator, start: Tensor) -> None:
        """``start``: ``[N, P]``, one start vector per recurrence (normalised into a copy;
        a caller that drops its own reference saves an N-vector per recurrence)."""
        norms = torch.linalg.vector_norm(start, dim=0)
        if not bool((norms > 0).all()):
            raise InvalidArgumentError("a Lanczos start vector is zero; use a non-zero vector")
        self.op = op
        probes = start.shape[1]
        self._q = (start / norms).to(op.dtype)
        self._q_previous: Tensor | None = None  # q_0 = 0: no N-vector of zeros held
        self._beta_previous = torch.zeros(probes, dtype=torch.float64, device=self._q.device)
        self._scale = torch.zeros(probes, dtype=torch.float64)
        self.alphas: list[Tensor] = []  # α_j, float64 [P] on the CPU
        self.betas: list[Tensor] = []  # β_j, float64 [P] on the CPU
        self.lengths = np.full(probes, -1)
        self.done = torch.zeros(probes, dtype=torch.bool)

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def step(self) -> None:
        """One product per recurrence (a recurrence that is ``done`` multiplies zeros)."""
        w = self.op.matmat(self._q)
        if not bool(torch.isfinite(w).all()):
            raise NonFiniteError(
                "the operator returned a non-finite product; check the model's loss and parameters"
            )
        alpha = column_dots(self._q, w)
        w.addcmul_(self._q, alpha.to(w.dtype), value=-1)  # in place: no N × P temporary
        if self._q_previous is not None:
            w.addcmul_(self._q_previous, self._beta_previous.to(w.dtype), value=-1)
        beta = torch.linalg.vector_norm(w, dim=0).to(torch.float64)
        self.alphas.append(alpha.cpu())
        self.betas.append(beta.cpu())
        self._scale = torch.maximum(self._scale, torch.maximum(alpha.abs(), beta).cpu())
        threshold = torch.finfo(self.op.dtype).eps ** (2 / 3) * self._scale
        stop = (beta.cpu() <= threshold) & ~self.done
        self.lengths[stop.numpy()] = self.steps
        self.done |= stop
        keep = ~self.done.to(w.device)
        w.div_(torch.where(keep, beta, torch.ones_like(beta)).to(w.dtype))
        w.masked_fill_(~keep, 0)
        self._q_previous, self._q = self._q, w
        self._beta_previous = beta

    def tridiagonal(self, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(α_1..α_m, β_1..β_{m−1}) of recurrence ``index``'s T_m, and β_m is
        ``float(self.betas[-1][index])``."""
        length = self.steps if self.lengths[index] < 0 else int(self.lengths[index])
        alphas = np.array([float(a[index]) for a in self.alphas[:length]])
        betas = np.array([float(b[index]) for b in self.betas[: length - 1]])
        return alphas, betas
