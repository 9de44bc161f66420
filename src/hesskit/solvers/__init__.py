"""Iterative solvers for A x = b with a curvature operator A."""

from hesskit.solvers.cg import (
    CGResult,
    StopRule,
    conjugate_gradient,
    geometric_snapshots,
)
from hesskit.solvers.result import SolverResult, Status

__all__ = [
    "CGResult",
    "SolverResult",
    "Status",
    "StopRule",
    "conjugate_gradient",
    "geometric_snapshots",
]
