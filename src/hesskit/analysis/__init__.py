"""Analyses that put an optimizer's curvature estimate next to the exact curvature.

* :func:`rmsprop_curvature_analysis`: RMSProp's second moment against the exact diagonals.
* :func:`record_step`: an optimizer's preconditioner P against the exact GGN at one step
  (condition numbers of P^{-1/2} G P^{-1/2}, cosines with the damped Newton direction,
  predicted decreases); :class:`PreconditionerAnalysis` holds a run's records. The runs
  themselves (training each optimizer) are
  :func:`hesskit.training.preconditioner_run.preconditioner_analysis`.
* :func:`preconditioned_sharpness`: λ_max(P⁻¹H) of an optimizer's preconditioner P (Cohen et
  al. 2022), to compare with :func:`adam_stability_threshold` (38/η for β₁ = 0.9).

This package reads an optimizer through its public interface only and imports nothing
from ``hesskit.training`` (the data flow runs training → analysis).
"""

from hesskit.analysis.preconditioner import AnalysisSettings, record_step
from hesskit.analysis.preconditioner_records import PreconditionerAnalysis
from hesskit.analysis.rmsprop import (
    Comparison,
    RMSPropAnalysis,
    rmsprop_curvature_analysis,
    summarize,
)
from hesskit.analysis.sharpness import adam_stability_threshold, preconditioned_sharpness

__all__ = [
    "AnalysisSettings",
    "Comparison",
    "PreconditionerAnalysis",
    "RMSPropAnalysis",
    "adam_stability_threshold",
    "preconditioned_sharpness",
    "record_step",
    "rmsprop_curvature_analysis",
    "summarize",
]
