"""How an iterative solver ended, in words a user can act on.

Each :class:`Status` member's value is the sentence to show: what happened, the likely
cause and what to change (the style of lineax's ``RESULTS``). A solver returns a
:class:`SolverResult` (or a subclass) holding the solution, the status and its cost.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from torch import Tensor


class Status(enum.Enum):
    """Why a solver stopped; ``status.value`` is the message, with the remedy."""

    CONVERGED = "converged: the residual norm met max(atol, rtol·‖b‖)."
    PROGRESS_STALLED = (
        "stopped by Martens' relative-progress rule: the quadratic model improved by less "
        "than k·ε over the last k iterations; lower the progress tolerance ε to iterate longer."
    )
    MAX_ITERATIONS = (
        "reached maxiter before the stopping rule was met; raise maxiter, loosen rtol, "
        "add damping or a preconditioner."
    )
    NEGATIVE_CURVATURE = (
        "met a direction p with pᵀAp ≤ 0, so the matrix is not positive definite; the "
        "returned x still lowers the quadratic model, but add damping or use the "
        "Gauss-Newton matrix for a full solve."
    )
    NON_FINITE = (
        "a matrix or preconditioner product was NaN or infinite; the returned x is the last "
        "finite iterate; check the operator, the preconditioner and the right-hand side."
    )

    @property
    def success(self) -> bool:
        """The solver met a convergence rule (residual or relative progress)."""
        return self in (Status.CONVERGED, Status.PROGRESS_STALLED)


@dataclass(repr=False)
class SolverResult:
    """The outcome of an iterative solve of A x = b.

    Attributes:
        x: the solution estimate, flat ``[N]``.
        status: why the solver stopped (its value says what to do).
        iterations: iterations taken (0 when the starting point already met the rule).
        products: matrix-vector products with A.
    """

    x: Tensor
    status: Status
    iterations: int
    products: int

    @property
    def success(self) -> bool:
        return self.status.success

    def __repr__(self) -> str:
        """``CGResult(CONVERGED, iterations=12, products=12, N=1210)``, not the solution."""
        return (f"{type(self).__name__}({self.status.name}, iterations={self.iterations}, "
                f"products={self.products}, N={self.x.numel()})")
