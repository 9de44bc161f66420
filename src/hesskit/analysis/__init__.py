"""Analyses that put an optimizer's curvature estimate next to the exact curvature.

* :func:`rmsprop_curvature_analysis`: RMSProp's second moment against the exact diagonals.
* :func:`preconditioner_analysis`: any optimizer's preconditioner P against the exact GGN
  along a run (condition numbers of P^{-1/2} G P^{-1/2}, cosines with the damped Newton
  direction, predicted decreases).
"""

from hesskit.analysis.rmsprop import (
    Comparison,
    RMSPropAnalysis,
    rmsprop_curvature_analysis,
    summarize,
)

__all__ = [
    "AnalysisSettings",
    "Comparison",
    "OptimizerChoice",
    "PreconditionerAnalysis",
    "RMSPropAnalysis",
    "preconditioner_analysis",
    "rmsprop_curvature_analysis",
    "summarize",
]

_PRECONDITIONER_NAMES = frozenset(
    ("AnalysisSettings", "OptimizerChoice", "PreconditionerAnalysis", "preconditioner_analysis")
)


def __getattr__(name: str) -> object:
    """The preconditioner analysis, imported on first use: it drives the training registry,
    which imports ``hesskit`` itself (a module-level import here would be circular)."""
    if name in _PRECONDITIONER_NAMES:
        from hesskit.analysis import preconditioner

        return getattr(preconditioner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
