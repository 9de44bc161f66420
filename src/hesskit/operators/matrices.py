"""The one place that names hesskit's curvature matrices of a problem.

=================  ========  ==================================================  =========
matrix             name      definition (L = Σ_b w_b ℓ_b, J the output Jacobian)  operator
=================  ========  ==================================================  =========
Hessian            hessian   H = ∇²_θ L                                           exact
Gauss-Newton       ggn       G = Σ_b w_b J_bᵀ H_ℓ J_b (PSD for a convex loss)     exact
Fisher             fisher    F̂ = Σ_i a_i J_iᵀ E_ŷ[r r ᵀ] J_i, targets drawn        Monte-Carlo
empirical Fisher   ef        EF = Σ_i a_i ∇ℓ_i ∇ℓ_iᵀ with the observed targets     exact
=================  ========  ==================================================  =========

:class:`Matrix` is the name every other part of hesskit uses (the diagonal front door, the
command line, the analyses); :func:`curvature_operator` builds the operator for a name.
"""

from __future__ import annotations

import enum

from hesskit.errors import InvalidArgumentError
from hesskit.operators.base import ProblemOperator
from hesskit.operators.fisher import EmpiricalFisherOperator, FisherOperator
from hesskit.operators.gauss_newton import GaussNewtonOperator
from hesskit.operators.hessian import HessianOperator
from hesskit.problem import Problem


class Matrix(str, enum.Enum):
    """A curvature matrix of a problem, by its short name."""

    HESSIAN = "hessian"
    GGN = "ggn"
    FISHER = "fisher"
    EF = "ef"

    @property
    def title(self) -> str:
        """The matrix's name in prose."""
        return _TITLES[self]


_TITLES = {
    Matrix.HESSIAN: "Hessian",
    Matrix.GGN: "Gauss-Newton",
    Matrix.FISHER: "Fisher",
    Matrix.EF: "empirical Fisher",
}


def as_matrix(name: Matrix | str) -> Matrix:
    """The :class:`Matrix` for a name (``"hessian"``, ``"ggn"``, ``"fisher"``, ``"ef"``)."""
    try:
        return Matrix(name)
    except ValueError:
        known = ", ".join(m.value for m in Matrix)
        raise InvalidArgumentError(
            f"unknown curvature matrix {name!r}; use one of {known}"
        ) from None


def curvature_operator(
    problem: Problem,
    matrix: Matrix | str,
    *,
    cache: bool | None = None,
    samples: int = 1,
    seed: int = 0,
) -> ProblemOperator:
    """The operator of ``matrix`` for ``problem`` (``samples`` and ``seed``: the Fisher's
    draws per data point and their key)."""
    matrix = as_matrix(matrix)
    if matrix is Matrix.HESSIAN:
        return HessianOperator(problem, cache=cache)
    if matrix is Matrix.GGN:
        return GaussNewtonOperator(problem, cache=cache)
    if matrix is Matrix.FISHER:
        return FisherOperator(problem, samples=samples, cache=cache, seed=seed)
    return EmpiricalFisherOperator(problem, cache=cache)
