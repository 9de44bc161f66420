"""Analyses that put a first-order optimizer's statistics next to exact curvature."""

from hesskit.analysis.rmsprop import (
    Comparison,
    RMSPropAnalysis,
    rmsprop_curvature_analysis,
    summarize,
)

__all__ = ["Comparison", "RMSPropAnalysis", "rmsprop_curvature_analysis", "summarize"]
