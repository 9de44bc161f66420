"""Extreme eigenpairs of a symmetric curvature operator: Lanczos, and power iteration.

``top_eigenpairs`` runs the Lanczos recurrence A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ with full
reorthogonalisation (classical Gram-Schmidt, twice: "twice is enough", Giraud et al. 2005),
one product per step. After each step the eigenpairs (θ_i, s_i) of the small tridiagonal T_m
give Ritz pairs (θ_i, Q_m s_i) whose residual is known without another product:

    ‖A Q_m s_i − θ_i Q_m s_i‖ = β_m |e_mᵀ s_i|                     (Parlett, §13.1)

For a symmetric A an eigenvalue λ lies within the residual r_i of θ_i (Weyl), and, if no
other eigenvalue lies within gap_i of θ_i, within r_i² / gap_i (Kato-Temple; Parlett §11.7).
It stops when, for each of the k wanted Ritz values, the error bound

    min(r_i, r_i² / gap_i) ≤ tol · max(|θ_i|, floor),   floor = ε^{2/3} · max_j |θ_j|,

with gap_i = min_{j≠i} (|θ_i − θ_j| − r_j) estimated from the other Ritz values and their
residual intervals. The r_i term is a guarantee; the r_i²/gap_i term is exact once the
neighbouring Ritz values have converged, and can be optimistic while an eigenvalue near θ_i
has no Ritz value yet. ``tol`` is therefore a relative tolerance on the eigenvalues, not on
the residuals (those are reported: ``Eigenpairs.residuals``). Extreme Ritz values converge
fastest, so top-k needs few products. The test is applied only after max(2k + 1, 20)
steps (``MIN_STEPS``, as ARPACK's default ``ncv``), or once the Krylov space is exhausted.
The basis is kept (N × m numbers).

``power_iteration`` is block power (subspace) iteration with a Rayleigh-Ritz step and the
same residual test, k products per iteration. It finds the eigenvalues of largest
*magnitude*; it is here for comparison (it is what PyHessian uses) and is much slower.

``LanczosRecurrence`` also serves stochastic Lanczos quadrature (``spectral_density.py``):
it runs P independent recurrences at once, one ``matmat`` of P columns per step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError, NonFiniteError
from hesskit.estimators.probes import check_count, gaussian, make_generator
from hesskit.estimators.result import Eigenpairs
from hesskit.operators.base import CurvatureOperator
from hesskit.progress import Progress

WHICH = ("largest", "smallest")
MIN_STEPS = 20
"""Lanczos steps before the stopping test is trusted (at least 2k + 1): SciPy's default
``ncv``. Fewer steps can leave an outlying eigenvalue without any Ritz value, and then a
well-converged Ritz value of the next one would be reported in its place."""


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
            start.shape[1], 8, start.shape[0], dtype=op.dtype, device=op.device
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


def top_eigenpairs(
    op: CurvatureOperator,
    k: int = 1,
    *,
    which: str = "largest",
    tol: float = 1e-3,
    max_products: int | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> Eigenpairs:
    """The k largest (or smallest, algebraically) eigenpairs of a symmetric A by Lanczos.

    Args:
        op: the N×N symmetric operator A.
        k: number of eigenpairs, 1 ≤ k ≤ N.
        which: "largest" or "smallest" (algebraic, so negative eigenvalues of an indefinite
            Hessian come out with "smallest").
        tol: relative eigenvalue tolerance: stop when every wanted error bound
            min(r_i, r_i²/gap_i) ≤ tol · max(|θ_i|, floor) (see the module docstring).
        max_products: product budget (default min(N, max(100, 30 k))); the result has
            ``converged=False`` if it runs out first.
        generator: source of the Gaussian start vector; default seeded with ``seed``.
        seed: seed used when ``generator`` is None.
        progress: show a progress bar (None: only if it runs longer than 2 s).

    Returns:
        ``Eigenpairs`` ordered from the requested end; ``residuals`` are the bounds
        β_m |e_mᵀ s_i|, equal to the true residuals up to rounding.

    A single start vector cannot see how often a repeated eigenvalue repeats: when the
    Krylov space is exhausted (β_m ≤ ε^{2/3}·max(|α|, β), an invariant subspace to that
    accuracy) the recurrence restarts from a new random vector orthogonal to the basis
    (T_m gets a zero off-diagonal there). It restarts until a new block adds no wanted
    eigenvalue, so repeated eigenvalues come out with their multiplicity.
    """
    n = op.shape[0]
    k = _check_k(k, n)
    if which not in WHICH:
        raise InvalidArgumentError(f"which must be 'largest' or 'smallest', got {which!r}")
    tol = _check_tol(tol)
    budget = min(n, max(100, 30 * k)) if max_products is None else min(n, max_products)
    check_count("max_products", budget, k)
    generator = make_generator(generator, seed)
    sign = 1.0 if which == "largest" else -1.0
    recurrence = LanczosRecurrence(op, gaussian((n, 1), generator, op.dtype, op.device))
    block_start = 0  # first step of the current Krylov block (blocks begin at restarts)
    min_steps = min(budget, max(2 * k + 1, MIN_STEPS))
    with Progress(f"Lanczos ({which} {k})", budget, show=progress) as bar:
        while True:
            beta = float(recurrence.step()[0])
            bar.advance(1)
            m = recurrence.steps
            values, vectors_t, residuals, bounds = _wanted_ritz_pairs(recurrence, beta, k, sign)
            accurate = len(values) >= k and _meets(values, bounds, tol, recurrence, op)
            converged = accurate and m >= min_steps
            if m >= n or m >= budget:
                break
            if bool(recurrence.broke_down[0]):
                if not _block_may_add_wanted(recurrence, block_start, k, sign):
                    converged = accurate  # the whole Krylov space has been seen
                    break
                fresh = gaussian((n,), generator, op.dtype, op.device)
                if not recurrence.restart(0, fresh):
                    converged = accurate
                    break
                block_start = m
            elif converged:
                break
    basis = recurrence.basis[0, :m]
    ritz_vectors = basis.T @ torch.as_tensor(vectors_t, dtype=op.dtype, device=op.device)
    return Eigenpairs(
        values=torch.as_tensor(values, dtype=op.dtype),
        vectors=ritz_vectors,
        products=m,
        residuals=torch.as_tensor(residuals, dtype=op.dtype),
        converged=bool(converged),
        error_bounds=torch.as_tensor(bounds, dtype=op.dtype),
    )


def _wanted_ritz_pairs(
    recurrence: LanczosRecurrence, beta: float, k: int, sign: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The k Ritz values nearest the wanted end, their T-eigenvectors, residuals and
    eigenvalue error bounds min(r_i, r_i² / gap_i)."""
    alphas, betas = recurrence.tridiagonal(0)
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    theta, S = np.linalg.eigh(T)
    residuals = abs(beta) * np.abs(S[-1])
    order = np.argsort(-sign * theta, kind="stable")[:k]
    bounds = np.array([_error_bound(theta, residuals, i) for i in order])
    return theta[order], S[:, order], residuals[order], bounds


def _error_bound(theta: np.ndarray, residuals: np.ndarray, i: int) -> float:
    """min(r_i, r_i² / gap_i), gap_i = min_{j≠i} (|θ_i − θ_j| − r_j) (Kato-Temple)."""
    others = np.delete(np.arange(len(theta)), i)
    if len(others) == 0:
        return float(residuals[i])
    gap = float(np.min(np.abs(theta[i] - theta[others]) - residuals[others]))
    if gap <= 0:
        return float(residuals[i])
    return float(min(residuals[i], residuals[i] ** 2 / gap))


def _block_may_add_wanted(
    recurrence: LanczosRecurrence, block_start: int, k: int, sign: float
) -> bool:
    """After the Krylov space of the current block is exhausted: could another block add a
    wanted eigenvalue? Its eigenvalues are (generically) all the distinct eigenvalues of A on
    the complement of the earlier blocks; if its best is no better than the k-th best of the
    earlier blocks, the complement holds no further wanted eigenvalue (or copy of one).
    """
    alphas, betas = recurrence.tridiagonal(0)
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    earlier = np.sort(sign * np.linalg.eigvalsh(T[:block_start, :block_start]))[::-1]
    latest = sign * np.linalg.eigvalsh(T[block_start:, block_start:])
    return len(earlier) < k or float(latest.max()) > float(earlier[k - 1])


def _meets(
    values: np.ndarray,
    bounds: np.ndarray,
    tol: float,
    recurrence: LanczosRecurrence,
    op: CurvatureOperator,
) -> bool:
    alphas, _ = recurrence.tridiagonal(0)
    scale = max(float(np.max(np.abs(values))), float(np.max(np.abs(alphas))))
    floor = torch.finfo(op.dtype).eps ** (2 / 3) * scale
    return bool(np.all(bounds <= tol * np.maximum(np.abs(values), floor)))


def power_iteration(
    op: CurvatureOperator,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_products: int | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> Eigenpairs:
    """The k eigenpairs of largest magnitude by block power iteration with Rayleigh-Ritz.

    Each iteration: W = A V (k products), Ritz pairs of Vᵀ W, residuals ‖A y_i − θ_i y_i‖
    from W at no extra cost, then V ← orth(A Y). Converges like (|λ_{k+1}| / |λ_i|)^t, so it
    needs many more products than Lanczos. It stops on the residual (Weyl) bound alone,
    r_i ≤ tol·|θ_i|: the block holds no Ritz value beyond the k-th to estimate a gap from.

    Args:
        op: the N×N symmetric operator A.
        k: number of eigenpairs, 1 ≤ k ≤ N.
        tol: stop when every residual ≤ tol · max(|θ_i|, ε^{2/3} max|θ|).
        max_products: product budget (default 100 k, as PyHessian's 100 iterations).
        generator: source of the Gaussian start block; default seeded with ``seed``.
        seed: seed used when ``generator`` is None.
        progress: show a progress bar (None: only if it runs longer than 2 s).
    """
    n = op.shape[0]
    k = _check_k(k, n)
    tol = _check_tol(tol)
    budget = 100 * k if max_products is None else max_products
    check_count("max_products", budget, k)
    generator = make_generator(generator, seed)
    V, _ = torch.linalg.qr(gaussian((n, k), generator, op.dtype, op.device))
    products = 0
    with Progress(f"power iteration ({k})", budget, show=progress) as bar:
        while True:
            W = op.matmat(V)
            products += k
            bar.advance(k)
            if not bool(torch.isfinite(W).all()):
                raise NonFiniteError(
                    "the operator returned a non-finite product; check the model and its loss"
                )
            H = V.T @ W
            theta, S = torch.linalg.eigh((H + H.T).to(torch.float64) / 2)
            order = torch.argsort(-theta.abs(), stable=True)
            theta, S = theta[order], S[:, order].to(op.dtype)
            Y, AY = V @ S, W @ S
            residuals = torch.linalg.vector_norm(AY - Y * theta.to(op.dtype), dim=0)
            floor = torch.finfo(op.dtype).eps ** (2 / 3) * float(theta.abs().max())
            limit = tol * torch.clamp(theta.abs(), min=floor).to(op.dtype)
            converged = bool((residuals <= limit).all())
            if converged or products + k > budget:
                break
            V, _ = torch.linalg.qr(AY if float(theta.abs().max()) > 0 else Y)
    residuals = residuals.cpu()
    return Eigenpairs(theta.to(op.dtype).cpu(), Y, products, residuals, converged, residuals)


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise InvalidArgumentError(
            f"k must be an integer between 1 and the matrix size N={n}, got {k!r}"
        )
    return k


def _check_tol(tol: float) -> float:
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise InvalidArgumentError(f"tol must be a finite number greater than 0, got {tol!r}")
    return float(tol)
