"""Curvature matrices as linear operators."""

from hesskit.operators.base import CurvatureOperator, MatrixOperator, ProblemOperator

__all__ = ["CurvatureOperator", "MatrixOperator", "ProblemOperator"]
