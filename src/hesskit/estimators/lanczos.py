"""Extreme eigenpairs of a symmetric curvature operator by Lanczos, in O(k) vectors of N.

``top_eigenpairs`` runs the Lanczos recurrence A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ with full
reorthogonalisation on a basis of at most ``max_vectors`` N-vectors, restarted thick when
it is full (Wu & Simon 2000: ``thick_restart.py``), one product per step. The basis size
is set by the memory budget (:mod:`hesskit.memory`) unless given; when the budget holds
the whole run (the default on small models) no restart happens and the result is plain
Lanczos. After each step the eigenpairs (θ_i, s_i) of the small T_m give Ritz pairs
(θ_i, Q_m s_i) whose residual is known without another product:

    ‖A Q_m s_i − θ_i Q_m s_i‖ = β_m |e_mᵀ s_i|                     (Parlett, §13.1)

which a thick restart preserves (Wu & Simon 2000, §3). For a symmetric A an eigenvalue λ
lies within the residual r_i of θ_i (Weyl), and, if no other eigenvalue lies within gap_i
of θ_i, within r_i² / gap_i (Kato-Temple; Parlett §11.7). It stops when, for each of the k
wanted Ritz values, the error bound

    min(r_i, r_i² / gap_i) ≤ tol · max(|θ_i|, floor),   floor = ε^{2/3} · max_j |θ_j|,

with gap_i = min_{j≠i} (|θ_i − θ_j| − r_j) estimated from the other Ritz values and their
residual intervals. The r_i term is a guarantee; the r_i²/gap_i term is exact once the
neighbouring Ritz values have converged, and can be optimistic while an eigenvalue near θ_i
has no Ritz value yet. ``tol`` is therefore a relative tolerance on the eigenvalues, not on
the residuals (those are reported: ``Eigenpairs.residuals``). The test is applied only
after max(2k + 1, 20) products (``MIN_STEPS``, as ARPACK's default ``ncv``), or once the
Krylov space is exhausted.

Memory: ``max_vectors`` + 2 N-vectors (+ k for the returned eigenvectors), checked against
the budget before the first product (:func:`lanczos_vectors`).

Without eigenvectors, where the budget cannot hold the basis of a whole unrestarted run
(GPT-2 small: 0.5 GB per N-vector), the default is the three-term recurrence without
reorthogonalisation (``reorthogonalize=False``; ``recurrence.ThreeTermRecurrence``, 5
N-vectors whatever the number of steps): it needs as few products as full
reorthogonalisation for the extreme eigenvalues (the restarted basis needs more), and the
ghost copies that the loss of orthogonality creates are merged (``ghost_filter.py``), the
bounds taking rounding into account (Paige 1980). It cannot continue past an exhausted
Krylov space, so it finds no multiplicities, and eigenvalues of A closer than the
tolerance count once.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hesskit.errors import InvalidArgumentError
from hesskit.estimators.ghost_filter import distinct_ritz_values
from hesskit.estimators.probes import check_count, gaussian, make_generator
from hesskit.estimators.recurrence import THREE_TERM_VECTORS, ThreeTermRecurrence
from hesskit.estimators.result import Eigenpairs
from hesskit.estimators.ritz import (
    eigenpairs_result,
    error_bound,
    meets_tolerance,
    unchanged_at_breakdown,
    wanted_ritz_pairs,
)
from hesskit.estimators.thick_restart import WORK_VECTORS, ThickRestartLanczos
from hesskit.memory import check_vectors_fit, format_bytes, vector_bytes, vectors_that_fit
from hesskit.operators.base import CurvatureOperator
from hesskit.progress import Progress

WHICH = ("largest", "smallest")
MIN_STEPS = 20
"""Lanczos steps before the stopping test is trusted (at least 2k + 1): SciPy's default
``ncv``. Fewer steps can leave an outlying eigenvalue without any Ritz value, and then a
well-converged Ritz value of the next one would be reported in its place."""


CHECKS_PER_RUN = 100
"""The three-term path tests for convergence after every step up to step 2·CHECKS_PER_RUN,
then every ⌊m / CHECKS_PER_RUN⌋ steps (at most 1 % more products than needed), since each
test merges ghosts in O(m²) operations."""


def lanczos_vectors(k: int, max_vectors: int, return_vectors: bool) -> int:
    """N-vectors :func:`top_eigenpairs` holds at its peak: the basis, the work vectors of
    ``thick_restart.WORK_VECTORS`` and, when asked for, the k eigenvectors."""
    return max_vectors + WORK_VECTORS + (k if return_vectors else 0)


def top_eigenpairs(
    op: CurvatureOperator,
    k: int = 1,
    *,
    which: str = "largest",
    tol: float = 1e-3,
    max_products: int | None = None,
    min_products: int | None = None,
    max_vectors: int | None = None,
    return_vectors: bool = False,
    reorthogonalize: bool | None = None,
    memory_budget: int | str | None = None,
    start: torch.Tensor | None = None,
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
        max_products: product budget (default max(100, 30 k), at most N when no restart
            is needed); the result has ``converged=False`` if it runs out first.
        min_products: products before the stopping test is trusted; default
            max(2k + 1, ``MIN_STEPS``). A smaller value suits a warm ``start`` already near
            the wanted eigenvectors (a new outlier may then be missed for a while).
        max_vectors: N-vectors in the Lanczos basis, at least min(k + 2, N + 1); a thick
            restart keeps k + ⌊(max_vectors − 1 − k)/2⌋ Ritz vectors when it is full (our
            choice: half the room beyond the k wanted, so a cycle adds about as many new
            directions as it keeps extra Ritz vectors).
            Default: as many as the run can use (products + 1) within the memory budget.
        return_vectors: also return the k Ritz vectors (k more N-vectors); otherwise
            ``vectors`` is None.
        reorthogonalize: ``True``: a reorthogonalised basis of ``max_vectors`` (thick
            restarts when full); ``False``: the three-term recurrence, 5 N-vectors, no
            eigenvectors, ghost copies merged (module docstring). ``None`` (default):
            ``True`` when eigenvectors are asked for, ``max_vectors`` is given or the
            budget holds the basis of the whole run; ``False`` otherwise.
        memory_budget: bytes or a size like ``"2GB"``; default
            :func:`hesskit.memory.default_memory_budget`.
        start: the start vector ``[N]`` (a warm start, e.g. the previous top eigenvector
            of a slowly changing A); default a Gaussian vector from ``generator``.
        generator: source of the Gaussian start vector (and of the new directions after
            an exhausted Krylov space); default seeded with ``seed``.
        seed: seed used when ``generator`` is None.
        progress: show a progress bar (None: only if it runs longer than 2 s).

    Returns:
        ``Eigenpairs`` ordered from the requested end; ``residuals`` are the bounds
        β_m |e_mᵀ s_i|, equal to the true residuals up to rounding.

    Raises:
        TooLargeError: before any product, when the basis and work vectors exceed the
            budget; the message names the largest ``max_vectors`` that fits, if any.

    A single start vector cannot see how often a repeated eigenvalue repeats: when the
    Krylov space is exhausted (β_m ≤ ε^{2/3}·max(|α|, β), an invariant subspace to that
    accuracy) the recurrence continues from a new random vector orthogonal to the basis
    (T_m gets no coupling to it). It does so until a new block changes none of the k
    wanted Ritz values, so repeated eigenvalues come out with their multiplicity *when the
    Krylov space is exhausted* within the product budget and the basis (each new block
    needs as many vectors as A has distinct eigenvalues on the complement, beside the k
    kept; a capped basis holds that only for few distinct eigenvalues). Otherwise, as for
    every single-vector Krylov method (ARPACK's included), the Krylov space holds one
    direction of each eigenspace in exact arithmetic: a repeated eigenvalue may be reported
    once (rounding can surface further copies) and the next distinct one in its place,
    each with a valid error bound for *some* eigenvalue.
    """
    n = op.shape[0]
    k = check_k(k, n)
    if which not in WHICH:
        raise InvalidArgumentError(f"which must be 'largest' or 'smallest', got {which!r}")
    tol = check_tol(tol)
    if max_products is not None:
        check_count("max_products", max_products, k)
    budget = max(100, 30 * k) if max_products is None else max_products
    least = max(2 * k + 1, MIN_STEPS) if min_products is None else check_count(
        "min_products", min_products, 1)
    sign = 1.0 if which == "largest" else -1.0
    generator = make_generator(generator, seed)
    if start is not None:
        start = _checked_start(start, op)
    if not _keeps_basis(op, k, reorthogonalize, max_vectors, return_vectors, budget,
                        memory_budget):
        with Progress(f"Lanczos ({which} {k}, three-term)", budget, show=progress) as bar:
            min_steps = min(budget, least)
            return _three_term_pairs(op, start, generator, k, sign, tol, budget, min_steps,
                                     bar)
    max_vectors = _basis_size(op, k, max_vectors, min(n, budget), return_vectors, memory_budget)
    if max_vectors >= n + 1:  # never restarts: the Krylov space is exhausted after N steps
        budget = min(n, budget)
    min_steps = min(budget, least)
    keep = k + (max_vectors - 1 - k) // 2
    if start is None:
        start = gaussian((n,), generator, op.dtype, op.device)
    lanczos = ThickRestartLanczos(op, start, max_vectors)
    del start
    best_at_breakdown: np.ndarray | None = None
    with Progress(f"Lanczos ({which} {k})", budget, show=progress) as bar:
        while True:
            if lanczos.full:
                theta, S = np.linalg.eigh(lanczos.projected())
                kept = np.argsort(-sign * theta, kind="stable")[:keep]
                lanczos.restart(S[:, kept], theta[kept])
            lanczos.step()
            bar.advance(1)
            T = lanczos.projected()
            values, vectors_t, residuals, bounds = wanted_ritz_pairs(T, lanczos.beta, k, sign)
            accurate = len(values) >= k and meets_tolerance(values, bounds, tol, np.diag(T), op)
            converged = accurate and lanczos.products >= min_steps
            if lanczos.products >= budget:
                break
            if lanczos.broke_down:
                if lanczos.size >= n or unchanged_at_breakdown(values, best_at_breakdown, k, T, op):
                    converged = accurate  # the whole Krylov space has been seen
                    break
                best_at_breakdown = values
                if not lanczos.continue_with(gaussian((n,), generator, op.dtype, op.device)):
                    converged = accurate
                    break
            elif converged:
                break
    vectors = lanczos.ritz_vectors(vectors_t) if return_vectors else None
    return eigenpairs_result(values, vectors, lanczos.products, residuals, converged, bounds, op)


def _checked_start(start: torch.Tensor, op: CurvatureOperator) -> torch.Tensor:
    """``start`` as a finite, non-zero ``[N]`` vector of the operator's dtype and device."""
    if not isinstance(start, torch.Tensor) or start.shape != (op.shape[0],):
        shape = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
        raise InvalidArgumentError(f"start must be a tensor of shape [{op.shape[0]}], got {shape}")
    start = start.detach().to(dtype=op.dtype, device=op.device)
    if not bool(torch.isfinite(start).all()) or not bool((start != 0).any()):
        raise InvalidArgumentError("start must be finite and non-zero")
    return start


def _keeps_basis(
    op: CurvatureOperator,
    k: int,
    reorthogonalize: bool | None,
    max_vectors: int | None,
    return_vectors: bool,
    steps: int,
    memory_budget: int | str | None,
) -> bool:
    """Whether to run with a reorthogonalised basis (see ``reorthogonalize``); the
    three-term recurrence's 5 N-vectors are checked against the budget when not."""
    n = op.shape[0]
    if reorthogonalize is None:
        whole_run = lanczos_vectors(k, min(n, steps) + 1, return_vectors)
        reorthogonalize = (
            return_vectors or max_vectors is not None
            or whole_run <= vectors_that_fit(n, op.dtype, memory_budget)
        )
    if reorthogonalize:
        return True
    if return_vectors or max_vectors is not None:
        given = "return_vectors=True" if return_vectors else "max_vectors"
        raise InvalidArgumentError(
            f"{given} needs a basis: pass reorthogonalize=True (or None), not False"
        )
    check_vectors_fit(
        n, op.dtype, THREE_TERM_VECTORS, what="top_eigenpairs (three-term recurrence)",
        instead=f"pass a memory_budget of at least "
        f"{format_bytes(THREE_TERM_VECTORS * vector_bytes(n, op.dtype))}",
        memory_budget=memory_budget,
    )
    return False


def _three_term_pairs(
    op: CurvatureOperator,
    start: torch.Tensor | None,
    generator: torch.Generator,
    k: int,
    sign: float,
    tol: float,
    budget: int,
    min_steps: int,
    bar: Progress,
) -> Eigenpairs:
    """The k wanted distinct Ritz values of the three-term recurrence from ``start``
    (``[N]``; None: a Gaussian vector), stopped by the test of :func:`top_eigenpairs`.
    No reference to a start vector of its own is kept: the recurrence holds its
    normalised copy (one N-vector less for the whole run)."""
    if start is None:
        recurrence = ThreeTermRecurrence(
            op, gaussian((op.shape[0], 1), generator, op.dtype, op.device))
    else:
        recurrence = ThreeTermRecurrence(op, start[:, None])
        del start
    eps = torch.finfo(op.dtype).eps
    while True:
        recurrence.step()
        bar.advance(1)
        m = recurrence.steps
        if m % max(1, m // CHECKS_PER_RUN) and not bool(recurrence.done[0]) and m < budget:
            continue
        alphas, betas = recurrence.tridiagonal()
        beta_last = 0.0 if bool(recurrence.done[0]) else float(recurrence.betas[-1][0])
        theta, residuals, copies = distinct_ritz_values(alphas, betas, beta_last, eps)
        order = np.argsort(-sign * theta, kind="stable")[:k]
        bounds = np.array([error_bound(theta, residuals, i) for i in order])
        values, residuals = theta[order], residuals[order]
        settled = np.maximum(bounds, copies[order])  # merged copies as accurate as tol too
        accurate = len(values) >= k and meets_tolerance(values, settled, tol, alphas, op)
        converged = accurate and recurrence.steps >= min_steps
        if bool(recurrence.done[0]):  # the Krylov space is exhausted: nothing more to see
            converged = accurate
            break
        if converged or recurrence.steps >= budget:
            break
    return eigenpairs_result(values, None, recurrence.steps, residuals, converged, bounds, op)


def _basis_size(
    op: CurvatureOperator,
    k: int,
    max_vectors: int | None,
    steps: int,
    return_vectors: bool,
    memory_budget: int | str | None,
) -> int:
    """``max_vectors``, checked; or by default min(steps + 1, what the budget holds)."""
    n = op.shape[0]
    least = min(k + 2, n + 1)  # k kept Ritz vectors, one new direction, q_{m+1}
    work = lanczos_vectors(k, 0, return_vectors)
    room = vectors_that_fit(n, op.dtype, memory_budget) - work
    if max_vectors is None:
        max_vectors = max(least, min(steps + 1, room))
    else:
        check_count("max_vectors", max_vectors, least)
    need = lanczos_vectors(k, least, return_vectors) * vector_bytes(n, op.dtype)
    what = f"top_eigenpairs (k = {k}, max_vectors = {max_vectors})"
    instead = (
        f"pass max_vectors={room} (the most that fits) or a larger memory_budget"
        if room >= least
        else f"pass a memory_budget of at least {format_bytes(need)} (k + {2 + work} "
        "N-vectors), or ask for fewer eigenpairs"
    )
    check_vectors_fit(
        n, op.dtype, lanczos_vectors(k, max_vectors, return_vectors), what=what,
        instead=instead, memory_budget=memory_budget,
    )
    return max_vectors


def check_k(k: int, n: int) -> int:
    """``k`` if it is an integer in [1, N]; otherwise a one-line error."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise InvalidArgumentError(
            f"k must be an integer between 1 and the matrix size N={n}, got {k!r}"
        )
    return k


def check_tol(tol: float) -> float:
    """``tol`` if it is a finite number > 0; otherwise a one-line error."""
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise InvalidArgumentError(f"tol must be a finite number greater than 0, got {tol!r}")
    return float(tol)
