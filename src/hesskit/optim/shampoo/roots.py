"""Matrix roots for Shampoo, and its preconditioner as a curvature operator.

Shampoo (Gupta, Koren & Singer 2018, Algorithm 1) multiplies a matrix gradient G
(``[m, n]``) by the inverse 4th roots of its statistics L (``[m, m]``) and R (``[n, n]``):
D = L^{-1/4} G R^{-1/4}. The roots come from one symmetric eigendecomposition each,
A = Q diag(λ) Qᵀ, computed in float64 (``torch.linalg.eigh``), so that

    (A + εI)^{-1/r} = Q diag((max(λ, 0) + ε)^{-1/r}) Qᵀ.

A is positive semi-definite by construction (a sum of G Gᵀ); eigenvalues below 0 are
rounding and are clamped at 0 before ε is added (facebookresearch/optimizers
``matrix_functions._matrix_inverse_root_eigen`` instead shifts all eigenvalues by the most
negative one, its ``make_positive_semidefinite``; the two agree for a PSD input).
Cost: O(m³) per factor.

In the row-major vec convention of hesskit's flat parameter vectors,
vec(A X B) = (A ⊗ Bᵀ) vec(X), so the preconditioner whose inverse gives D is

    P = L^{1/4} ⊗ R^{1/4},      P⁻¹ vec(G) = vec(L^{-1/4} G R^{-1/4}).

:func:`preconditioner_operator` assembles P over all parameters from the roots K-FAC's
operator already multiplies by (``operators/kfac.py``: a block V ↦ G_f V A_f, here
G_f = L^{1/4} and A_f = R^{1/4}), plus a diagonal for the parameters Shampoo leaves to its
graft.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.operators import CurvatureOperator, DiagonalOperator, KFACOperator, SumOperator
from hesskit.operators.kfac_factors import KroneckerFactors, LinearBlock


def inverse_root(matrix: Tensor, root: int, eps: float) -> Tensor:
    """(A + εI)^{-1/root} of a symmetric PSD ``matrix`` A (``[m, m]``), in A's dtype.

    One float64 eigendecomposition (module docstring); eigenvalues below 0 are clamped at 0.

    Raises:
        InvalidArgumentError: ``eps`` ≤ 0 (the root of a singular A does not exist) or
            ``root`` < 1.
    """
    if not eps > 0 or root < 1:
        raise InvalidArgumentError(
            f"inverse_root needs eps > 0 and root ≥ 1, got eps={eps}, root={root}; "
            "pass a positive eps (Shampoo's ε)"
        )
    values, vectors = torch.linalg.eigh(matrix.to(torch.float64))
    scaled = vectors * (values.clamp(min=0) + eps).pow(-1.0 / root)
    return (scaled @ vectors.T).to(matrix.dtype)


def spd_power(matrix: Tensor, power: float) -> Tensor:
    """A^power of a symmetric positive-definite ``matrix`` A (a root Shampoo computed), in
    float64 then A's dtype. Cost O(m³).

    Raises:
        InvalidArgumentError: A has an eigenvalue ≤ 0.
    """
    values, vectors = torch.linalg.eigh(matrix.to(torch.float64))
    if not bool((values > 0).all()):
        raise InvalidArgumentError(
            f"spd_power needs a positive-definite matrix; its smallest eigenvalue is "
            f"{float(values.min()):.3g}"
        )
    return ((vectors * values.pow(power)) @ vectors.T).to(matrix.dtype)


@dataclass(frozen=True)
class MatrixBlock:
    """One parameter that Shampoo preconditions, as the matrix X = p.reshape(rows, cols).

    Attributes:
        name: its name in the operator's layout.
        left_root, right_root: L^{-1/4} (``[rows, rows]``) and R^{-1/4} (``[cols, cols]``).
    """

    name: str
    left_root: Tensor
    right_root: Tensor


def preconditioner_operator(
    layout: ParameterLayout,
    blocks: list[MatrixBlock],
    diagonal: Tensor,
    power: float = 1.0,
) -> CurvatureOperator:
    """P^power for P = blockdiag(L^{1/4} ⊗ R^{1/4} per block; diag(d) elsewhere).

    Args:
        layout: the flat layout; a block's parameter has shape ``(rows, cols)`` in it.
        blocks: the preconditioned parameters with their inverse roots.
        diagonal: flat ``[N]`` d > 0 on the other parameters (its entries on blocks are
            ignored).
        power: the power of P (1: P; −1: P⁻¹, the map from a gradient to Shampoo's
            ungrafted direction; −1/2: P^{-1/2}). A block's power is
            L^{power/4} ⊗ R^{power/4} = (L^{-1/4})^{-power} ⊗ (R^{-1/4})^{-power}.

    Symmetric positive-definite; its exact ``diagonal()`` costs O(N). Cost of a product:
    Σ_blocks O(rows·cols·(rows + cols)) per vector; building it: two float64 eigh per block.
    """
    linear = [
        LinearBlock(module=b.name, weight=b.name, bias=None,
                    in_features=b.right_root.shape[0], out_features=b.left_root.shape[0])
        for b in blocks
    ]
    factors = {
        b.name: KroneckerFactors(A=spd_power(b.right_root, -power),
                                 G=spd_power(b.left_root, -power))
        for b in blocks
    }
    d = diagonal.clone()
    for b in blocks:
        d[layout.slice(b.name)] = 0
    d = torch.where(d != 0, d.pow(power), d)
    operators: list[CurvatureOperator] = [DiagonalOperator(d, layout)]
    if blocks:
        operators.insert(0, KFACOperator(layout, linear, factors, d.dtype, d.device))
    return SumOperator(operators)
