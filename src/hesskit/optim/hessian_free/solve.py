"""Hessian-free's inner solve: conjugate gradient on the damped system (Martens 2010,
§4.4–4.7), as a function of the operator, the gradient and the settings.

    (B + diag(wd) + λI) p = −∇F,   started from ζ·p_prev (the decayed warm start),

with Martens' stopping rule (relative progress over the last k iterations) and the
residual rule, the iterates kept at geometrically spaced iterations for backtracking, and
an optional diagonal preconditioner M = diag(m). Cost: one B-product per iteration.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hesskit.operators.base import CurvatureOperator
from hesskit.optim.hessian_free.settings import CGSettings
from hesskit.optim.safety import is_finite
from hesskit.solvers.cg import CGResult, StopRule, conjugate_gradient, geometric_snapshots
from hesskit.solvers.result import Status


def damped_product(
    operator: CurvatureOperator, shift: Tensor | float
) -> Callable[[Tensor], Tensor]:
    """v ↦ B v + shift ⊙ v (shift = wd + λ, a scalar or a flat ``[N]`` tensor), in v's
    dtype."""

    def product(v: Tensor) -> Tensor:
        return operator.matvec(v).to(v.dtype) + shift * v

    return product


def damped_cg(
    operator: CurvatureOperator, gradient: Tensor, shift: Tensor | float,
    settings: CGSettings, warm_start: Tensor | None, preconditioner: Tensor | None,
) -> CGResult:
    """CG on (B + shift) p = −gradient (module docstring).

    ``preconditioner``: the diagonal m of M (already including the shift), or None; a
    non-finite m returns a ``NON_FINITE`` result without running CG.
    """
    inverse = None
    if preconditioner is not None:
        m = preconditioner.to(gradient.dtype)
        if not is_finite(m):
            return CGResult(torch.zeros_like(gradient), Status.NON_FINITE, 0, 0)
        inverse = lambda r: r / m  # noqa: E731 - a one-line M⁻¹
    x0 = None
    if warm_start is not None and settings.warm_start_decay > 0:
        x0 = settings.warm_start_decay * warm_start.to(gradient)
    if isinstance(shift, Tensor):
        shift = shift.to(gradient.dtype)
    return conjugate_gradient(
        damped_product(operator, shift),
        -gradient,
        x0=x0,
        rtol=settings.rtol,
        maxiter=settings.max_iterations,
        M=inverse,
        stop=StopRule.MARTENS | StopRule.RESIDUAL,
        progress_tol=settings.progress_tol,
        progress_gap=settings.progress_gap,
        snapshot_at=geometric_snapshots(
            settings.max_iterations, settings.snapshot_growth, settings.first_snapshot
        ),
    )
