"""Preconditioned conjugate gradient with Martens' hooks: relative-progress stop and snapshots.

Solves A x = b for a symmetric positive-definite operator A (N×N), which is the same as
minimising the quadratic model

    φ(x) = ½ xᵀ A x − bᵀ x.

Hessian-free optimisation (Martens 2010) calls it with A = B + λI and b = −∇L, so that
φ(p) = ½ pᵀ(B + λI)p + ∇Lᵀp is Martens' q(p) − q(0) with the signs as in the paper.

Written by hand rather than taken from ``scipy.sparse.linalg.cg`` because Hessian-free needs
what SciPy does not expose: φ at every iterate (computed for free as φ = −½ xᵀ(b + r) with
the residual r = b − Ax), the relative-progress stopping rule (§4.4), copies of chosen
iterates for backtracking (§4.6) and a usable answer when pᵀAp ≤ 0. Argument names follow
SciPy (``x0``, ``rtol``, ``atol``, ``maxiter``, ``M``, ``callback``).

Cost: one product with A per iteration (plus one for the initial residual when ``x0`` is
given), one application of M⁻¹ per iteration, O(N) memory per snapshot.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.operators.base import CurvatureOperator
from hesskit.solvers.result import SolverResult, Status

Preconditioner = CurvatureOperator | Callable[[Tensor], Tensor]

MARTENS_PROGRESS_TOL = 5e-4
"""ε of Martens' relative-progress rule (Martens 2010, §4.4; ``tolerance = 5e-4``, HFDemo
``conjgrad_1.m`` line 4)."""

MARTENS_GAP_RATIO = 0.1
"""The gap k of the relative-progress rule grows as 0.1·i (§4.4; ``gapratio = 0.1``,
``conjgrad_1.m`` line 6)."""

MARTENS_MIN_GAP = 10
"""The smallest gap k (§4.4; ``mingap = 10``, ``conjgrad_1.m`` line 7)."""


def martens_gap(i: int) -> int:
    """k = max(10, ⌈0.1·i⌉), the gap at CG iteration i (``testgap = max(ceil(i *
    gapratio), mingap)``, HFDemo ``conjgrad_1.m`` line 66; the paper's §4.4 writes
    max(10, 0.1 i) without saying how it rounds).

    >>> [martens_gap(i) for i in (1, 100, 101, 109, 110, 111)]
    [10, 10, 11, 11, 11, 12]
    """
    return max(MARTENS_MIN_GAP, math.ceil(MARTENS_GAP_RATIO * i - 1e-9))


def floor_gap(i: int) -> int:
    """k = max(10, ⌊0.1·i⌋): hesskit's former rounding of the gap (an ablation; it lets CG
    stop up to one iteration of gap earlier than HFDemo for i ≥ 101).

    >>> [floor_gap(i) for i in (100, 101, 109, 110)]
    [10, 10, 10, 11]
    """
    return max(MARTENS_MIN_GAP, int(MARTENS_GAP_RATIO * i + 1e-9))

MARTENS_SNAPSHOT_GROWTH = 1.3
"""γ: keep the CG iterates numbered ⌈i₀·γ^j⌉ for backtracking (Martens 2010, §4.6;
``imult = 1.3`` in HFDemo ``conjgrad_1.m`` line 14)."""

MARTENS_FIRST_SNAPSHOT = 5
"""i₀: the first CG iterate kept for backtracking (``inext = 5`` in HFDemo ``conjgrad_1.m``
line 13, advanced by ``inext = inext*imult`` at each kept iterate, lines 69–73): iterates
5, 7, 9, 11, 15, 19, 25, … and the last."""


class StopRule(enum.Flag):
    """When CG stops besides ``maxiter``; combine with ``|`` to stop at whichever comes first.

    * ``RESIDUAL``: ‖b − Ax‖ ≤ max(atol, rtol·‖b‖), SciPy's rule.
    * ``MARTENS``: stop at iteration i > k when φ_{i−k} < 0 and (φ_i − φ_{i−k}) / φ_i < k·ε,
      with k = max(10, ⌈0.1 i⌉) and ε = 5e-4 (Martens 2010, §4.4; exactly HFDemo
      ``conjgrad_1.m`` lines 66–67, 80, which test φ k iterations AGO for a negative
      value): the model has stopped improving relative to its value, which is what matters
      for an optimisation step. The gap's rounding is ``progress_gap`` of
      :func:`conjugate_gradient`.
    """

    RESIDUAL = enum.auto()
    MARTENS = enum.auto()


@dataclass(repr=False)
class CGResult(SolverResult):
    """A conjugate-gradient solve.

    Attributes:
        model_values: φ(x_i) = ½ x_iᵀA x_i − bᵀx_i for i = 0 (the start) … ``iterations``.
        snapshots: ``(i, x_i)`` for each requested iteration reached, plus the final one
            (empty when ``snapshot_at`` is None).
        negative_curvature: the direction p with pᵀAp ≤ 0, when CG met one (else None).
    """

    model_values: list[float] = field(default_factory=list)
    snapshots: list[tuple[int, Tensor]] = field(default_factory=list)
    negative_curvature: Tensor | None = None


def geometric_snapshots(
    maxiter: int, growth: float = MARTENS_SNAPSHOT_GROWTH, first: float = 1.0
) -> tuple[int, ...]:
    """The distinct iterations ⌈first·γ^j⌉, j = 0, 1, …, up to ``maxiter`` (§4.6).

    Martens' released code keeps ⌈5·1.3^j⌉ (``first`` = :data:`MARTENS_FIRST_SNAPSHOT`,
    HFDemo ``conjgrad_1.m`` lines 13–14); ``first=1`` (the default here) also keeps the
    iterates 1–4, which his backtracking never falls back to.

    >>> geometric_snapshots(10)
    (1, 2, 3, 4, 5, 7, 9)
    >>> geometric_snapshots(30, first=5)
    (5, 7, 9, 11, 15, 19, 25)
    """
    if growth <= 1:
        raise InvalidArgumentError(f"snapshot growth must be > 1, got {growth}; Martens uses 1.3")
    if not first >= 1:
        raise InvalidArgumentError(f"the first snapshot must be ≥ 1, got {first}; Martens uses 5")
    steps: list[int] = []
    j = 0
    while (i := math.ceil(first * growth**j - 1e-9)) <= maxiter:
        if not steps or i != steps[-1]:
            steps.append(i)
        j += 1
    return tuple(steps)


def conjugate_gradient(
    op: CurvatureOperator | Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    x0: Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: Preconditioner | None = None,
    stop: StopRule = StopRule.RESIDUAL,
    progress_tol: float = MARTENS_PROGRESS_TOL,
    progress_gap: Callable[[int], int] = martens_gap,
    snapshot_at: Iterable[int] | None = None,
    callback: Callable[[Tensor], None] | None = None,
) -> CGResult:
    """Solve A x = b by (preconditioned) conjugate gradient.

    Args:
        op: A, a ``CurvatureOperator`` or a function v ↦ A v on flat ``[N]`` tensors.
        b: the right-hand side, flat ``[N]``.
        x0: the starting point (default 0), e.g. Martens' warm start (§4.5).
        rtol, atol: the residual rule ‖r‖ ≤ max(atol, rtol·‖b‖) (with ``StopRule.RESIDUAL``).
        maxiter: the iteration cap (default N).
        M: the preconditioner, applied as z = M⁻¹ r: an operator or a function (SciPy's
            convention: M approximates A⁻¹'s action). For Martens' diagonal preconditioner
            pass ``lambda r: r / m``.
        stop: which rules may stop CG before ``maxiter``; see :class:`StopRule`.
        progress_tol: ε of the relative-progress rule (Martens §4.4: 5e-4).
        progress_gap: i ↦ k, the gap of the relative-progress rule (:func:`martens_gap`,
            HFDemo's ⌈⌉; :func:`floor_gap` is hesskit's former ⌊⌋, for ablations).
        snapshot_at: iteration numbers whose iterates to keep, e.g.
            :func:`geometric_snapshots` (Martens §4.6); the final iterate is always kept.
        callback: called as ``callback(x_i)`` after each iteration (SciPy's convention).

    Returns:
        A :class:`CGResult`. Every iterate lowers φ below the previous one. When pᵀAp ≤ 0
        (an indefinite A), CG stops: after progress it returns the last iterate; at the first
        iteration it returns x0 + t p with t = rᵀz / |pᵀAp|, which lowers φ since p is a
        descent direction of φ (pᵀ∇φ = −rᵀM⁻¹r < 0) along which φ is concave. If pᵀAp = 0
        there, no step is taken and the direction is returned in ``negative_curvature``.
    """
    apply_A = op.matvec if isinstance(op, CurvatureOperator) else op
    apply_M = _preconditioner(M)
    if b.ndim != 1:
        raise InvalidArgumentError(f"b must be a flat [N] tensor, got shape {tuple(b.shape)}")
    n = b.shape[0]
    maxiter = n if maxiter is None else int(maxiter)
    if maxiter < 0:
        raise InvalidArgumentError(f"maxiter must be ≥ 0, got {maxiter}")
    wanted = set(snapshot_at) if snapshot_at is not None else None

    products = 0
    if x0 is None or not bool(torch.any(x0 != 0)):
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.to(b.dtype).clone()
        r = b - apply_A(x)
        products += 1
    result = CGResult(x, Status.MAX_ITERATIONS, 0, products)
    if not bool(torch.isfinite(r).all()):
        return _finish(result, torch.zeros_like(b), Status.NON_FINITE, wanted)
    result.model_values.append(_model_value(x, b, r))
    threshold = max(atol, rtol * float(b.norm()))
    if StopRule.RESIDUAL in stop and float(r.norm()) <= threshold:
        return _finish(result, x, Status.CONVERGED, wanted)

    z = apply_M(r)
    p = z.clone()
    rz = float(r @ z)
    if rz == 0:  # r = 0 (or below the dtype's resolution): x is already the solution
        return _finish(result, x, Status.CONVERGED, wanted)
    for i in range(1, maxiter + 1):
        Ap = apply_A(p)
        result.products += 1
        curvature = float(p @ Ap)
        if not math.isfinite(curvature) or not bool(torch.isfinite(Ap).all()) or not (
            math.isfinite(rz)
        ):
            return _finish(result, x, Status.NON_FINITE, wanted)
        if curvature <= 0:
            return _negative_curvature(result, x, b, r, p, rz, curvature, wanted)
        alpha = rz / curvature
        x = x + alpha * p
        r = r - alpha * Ap
        result.iterations = i
        result.model_values.append(_model_value(x, b, r))
        if wanted is not None and i in wanted:
            result.snapshots.append((i, x.clone()))
        if callback is not None:
            callback(x)
        if StopRule.RESIDUAL in stop and float(r.norm()) <= threshold:
            return _finish(result, x, Status.CONVERGED, wanted)
        if StopRule.MARTENS in stop and _progress_stalled(
            result.model_values, progress_tol, progress_gap
        ):
            return _finish(result, x, Status.PROGRESS_STALLED, wanted)
        z = apply_M(r)
        rz_next = float(r @ z)
        if rz_next == 0:  # the residual vanished exactly: no further direction exists
            return _finish(result, x, Status.CONVERGED, wanted)
        p = z + (rz_next / rz) * p
        rz = rz_next
    return _finish(result, x, Status.MAX_ITERATIONS, wanted)


def _preconditioner(M: Preconditioner | None) -> Callable[[Tensor], Tensor]:
    if M is None:
        return lambda r: r
    if isinstance(M, CurvatureOperator):
        return M.matvec
    if callable(M):
        return M
    raise InvalidArgumentError(
        f"M must be a CurvatureOperator or a function r ↦ M⁻¹r, got {type(M).__name__}"
    )


def _model_value(x: Tensor, b: Tensor, r: Tensor) -> float:
    """φ(x) = ½xᵀAx − bᵀx = −½ xᵀ(b + r), using Ax = b − r (no extra product)."""
    return -0.5 * float(x @ (b + r))


def _progress_stalled(values: list[float], tol: float, gap: Callable[[int], int]) -> bool:
    """Martens §4.4, as ``conjgrad_1.m`` line 80 writes it: i > k, φ_{i−k} < 0 and
    (φ_i − φ_{i−k}) / φ_i < k·ε, k = gap(i). (CG lowers φ at every iteration, so
    φ_{i−k} < 0 implies φ_i < 0 and the quotient is well defined.)"""
    i = len(values) - 1
    k = gap(i)
    if i <= k or values[i - k] >= 0:
        return False
    return (values[i] - values[i - k]) / values[i] < k * tol


def _negative_curvature(
    result: CGResult,
    x: Tensor,
    b: Tensor,
    r: Tensor,
    p: Tensor,
    rz: float,
    curvature: float,
    wanted: set[int] | None,
) -> CGResult:
    result.negative_curvature = p
    if result.iterations == 0 and curvature < 0:
        # φ(x + t p) = φ(x) − t rᵀz + ½ t² pᵀAp < φ(x) for every t > 0: take the step a
        # positive curvature |pᵀAp| would give (the saddle-free choice along p).
        t = rz / abs(curvature)
        x = x + t * p
        result.iterations = 1
        phi = result.model_values[0] - t * rz + 0.5 * t * t * curvature
        result.model_values.append(phi)
    return _finish(result, x, Status.NEGATIVE_CURVATURE, wanted)


def _finish(result: CGResult, x: Tensor, status: Status, wanted: set[int] | None) -> CGResult:
    result.x = x
    result.status = status
    kept = [i for i, _ in result.snapshots]
    if wanted is not None and (not kept or kept[-1] != result.iterations):
        result.snapshots.append((result.iterations, x.clone()))
    return result
