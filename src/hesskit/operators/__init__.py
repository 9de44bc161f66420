"""Curvature matrices as linear operators."""

from hesskit.operators.algebra import (
    DampedOperator,
    DiagonalOperator,
    ScaledOperator,
    SumOperator,
    damped,
)
from hesskit.operators.base import CurvatureOperator, MatrixOperator, ProblemOperator
from hesskit.operators.counting import CountingOperator
from hesskit.operators.fisher import (
    EmpiricalFisherOperator,
    FisherOperator,
    empirical_fisher_operator,
    fisher_operator,
)
from hesskit.operators.gauss_newton import GaussNewtonOperator, gauss_newton_operator
from hesskit.operators.hessian import HessianOperator, hessian_operator
from hesskit.operators.kfac import KFACOperator, kfac_operator
from hesskit.operators.kfac_factors import FactorTargets
from hesskit.operators.matrices import Matrix, as_matrix, curvature_operator
from hesskit.operators.powers import SandwichOperator, operator_power, symmetric_power

__all__ = [
    "CountingOperator",
    "CurvatureOperator",
    "DampedOperator",
    "DiagonalOperator",
    "EmpiricalFisherOperator",
    "FactorTargets",
    "FisherOperator",
    "GaussNewtonOperator",
    "HessianOperator",
    "KFACOperator",
    "Matrix",
    "MatrixOperator",
    "ProblemOperator",
    "SandwichOperator",
    "ScaledOperator",
    "SumOperator",
    "as_matrix",
    "curvature_operator",
    "damped",
    "empirical_fisher_operator",
    "fisher_operator",
    "gauss_newton_operator",
    "hessian_operator",
    "kfac_operator",
    "operator_power",
    "symmetric_power",
]
