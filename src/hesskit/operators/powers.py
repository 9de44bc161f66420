"""Real powers A^p of structured symmetric positive-definite operators, and the congruence
S A S.

A symmetric positive-definite A = Q diag(λ) Qᵀ has A^p = Q diag(λ^p) Qᵀ for every real p
(p = −1: the inverse; p = −1/2: the inverse square root, which turns the pencil (H, A)
into the symmetric A^{-1/2} H A^{-1/2} with the eigenvalues of A⁻¹H). For the structures
hesskit's preconditioners have, the power keeps the structure and costs little:

==============================  =================================================  =========
A                               A^p                                                 cost
==============================  =================================================  =========
diag(d)                         diag(d^p)                                           O(N)
a dense matrix M (N×N)          Q diag(λ^p) Qᵀ from one ``eigh``                    O(N³)
A_ℓ ⊗ G_ℓ per layer (K-FAC)     A_ℓ^p ⊗ G_ℓ^p (both factors SPD)                    Σ O(m³)
α A, α > 0                      α^p A^p
Σ_j A_j, supports disjoint      Σ_j A_j^p (each on its own parameters)
==============================  =================================================  =========

The last row is what makes K-FAC's and Shampoo's preconditioners (a Kronecker operator on
the covered parameters plus a diagonal, zero on them, elsewhere) powerable: an operator
that is zero outside a set of coordinates (its *support*) is block-diagonal with a zero
block, and a sum of such operators with pairwise disjoint supports is block-diagonal too,
so its power is the sum of the blocks' powers. The support of diag(d) is {i : d_i ≠ 0}, of
a K-FAC operator the parameters of its blocks, of a dense matrix everything.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.operators.algebra import DiagonalOperator, ScaledOperator, SumOperator
from hesskit.operators.base import CurvatureOperator, MatrixOperator
from hesskit.operators.kfac import KFACOperator
from hesskit.operators.kfac_factors import KroneckerFactors, covered_names


def symmetric_power(matrix: Tensor, power: float) -> Tensor:
    """M^p = Q diag(λ^p) Qᵀ of a symmetric ``matrix`` M (``[m, m]``), via one float64
    ``eigh`` (cost O(m³)), returned in M's dtype. For p < 0 M must be positive definite;
    for p ≥ 0 positive semi-definite (eigenvalues below 0 are rounding, clamped at 0).

    Raises:
        InvalidArgumentError: an eigenvalue is ≤ 0 for p < 0.
    """
    values, vectors = torch.linalg.eigh(matrix.to(torch.float64))
    if power < 0 and not bool((values > 0).all()):
        raise InvalidArgumentError(
            f"the power {power} needs a positive-definite matrix; its smallest eigenvalue "
            f"is {float(values.min()):.3g}"
        )
    values = values.clamp(min=0)
    return ((vectors * values.pow(power)) @ vectors.T).to(matrix.dtype)


def operator_power(operator: CurvatureOperator, power: float) -> CurvatureOperator:
    """A^p of a symmetric positive-definite A of known structure (module docstring),
    without forming the N×N matrix (except for a :class:`MatrixOperator`, which is one).

    Args:
        operator: a :class:`DiagonalOperator`, :class:`MatrixOperator`,
            :class:`KFACOperator`, a positive multiple of one (:class:`ScaledOperator`),
            or a :class:`SumOperator` of such operators on pairwise disjoint parameters.
        power: any real p (−1: A⁻¹, −1/2: A^{-1/2}).

    Raises:
        InvalidArgumentError: the structure is none of these; the terms of a sum overlap;
            A is singular (zero outside the terms' supports, or a non-positive eigenvalue)
            and p ≤ 0.
    """
    result, support = _power_on_support(operator, power)
    if power <= 0 and not bool(support.all()):
        where = operator.layout.label(int(torch.nonzero(~support)[0]))
        raise InvalidArgumentError(
            f"{type(operator).__name__} is zero on {where} (and maybe elsewhere): it is "
            f"singular, so it has no power {power}"
        )
    return result


def _power_on_support(op: CurvatureOperator, power: float) -> tuple[CurvatureOperator, Tensor]:
    """(B, s): s the boolean ``[N]`` support of A, B = A^p on it and 0 elsewhere."""
    if isinstance(op, DiagonalOperator):
        d = op.entries
        if bool((d < 0).any()) or not bool(torch.isfinite(d).all()):
            raise InvalidArgumentError("a diagonal operator with a negative or non-finite "
                                       "entry has no real power; its entries must be ≥ 0")
        support = d != 0
        powered = torch.where(support, d.pow(power), torch.zeros_like(d))
        return DiagonalOperator(powered, op.layout), support
    if isinstance(op, MatrixOperator):
        full = torch.ones(op.shape[0], dtype=torch.bool, device=op.device)
        powered = MatrixOperator(symmetric_power(op.matrix, power), op.layout, psd=True)
        return powered, full
    if isinstance(op, KFACOperator):
        factors = {name: KroneckerFactors(symmetric_power(f.A, power),
                                          symmetric_power(f.G, power))
                   for name, f in op.factors.items()}
        powered = KFACOperator(op.layout, op.blocks, factors, op.dtype, op.device)
        return powered, _kfac_support(op)
    if isinstance(op, ScaledOperator) and op.scale > 0:
        inner, support = _power_on_support(op.operator, power)
        return ScaledOperator(inner, op.scale**power), support
    if isinstance(op, SumOperator):
        return _sum_power(op, power)
    raise InvalidArgumentError(
        f"no cheap power of a {type(op).__name__}: pass a DiagonalOperator, MatrixOperator, "
        "KFACOperator, a positive multiple of one, or a sum of them on disjoint parameters "
        "(for a small N: MatrixOperator(op.to_dense(), op.layout))"
    )


def _kfac_support(op: KFACOperator) -> Tensor:
    covered = covered_names(op.blocks)
    return torch.cat([
        torch.full((size,), name in covered, dtype=torch.bool, device=op.device)
        for name, size in zip(op.layout.names, op.layout.sizes, strict=True)
    ])


def _sum_power(op: SumOperator, power: float) -> tuple[CurvatureOperator, Tensor]:
    terms, union = [], torch.zeros(op.shape[0], dtype=torch.bool, device=op.device)
    for term in op.operators:
        powered, support = _power_on_support(term, power)
        if bool((union & support).any()):
            raise InvalidArgumentError(
                "the terms of the sum act on shared parameters, so its power is not the sum "
                "of their powers; pass the terms on disjoint parameters (or a dense matrix)"
            )
        terms.append(powered)
        union = union | support
    return SumOperator(terms), union


class SandwichOperator(CurvatureOperator):
    """S A S for symmetric S and A on one layout. With S = P^{-1/2} for an SPD P it is the
    congruence whose eigenvalues are those of the pencil (A, P), i.e. of P⁻¹A (similar to
    it: P^{-1/2} (P⁻¹A) P^{1/2} = S A S). Symmetric; PSD when A is. Cost of a product: one
    product of A and two of S."""

    def __init__(self, outer: CurvatureOperator, inner: CurvatureOperator) -> None:
        if outer.shape != inner.shape:
            raise InvalidArgumentError(
                f"S ({outer.shape[0]}×{outer.shape[0]}) and A ({inner.shape[0]}×"
                f"{inner.shape[0]}) must act on the same parameters"
            )
        super().__init__(inner.layout, inner.dtype, inner.device)
        self.outer, self.inner = outer, inner
        self.psd = inner.psd

    def _repr_fields(self) -> dict[str, object]:
        return {"of": f"{type(self.outer).__name__} · {type(self.inner).__name__} · "
                      f"{type(self.outer).__name__}"}

    def _matmat(self, V: Tensor) -> Tensor:
        return self.outer.matmat(self.inner.matmat(self.outer.matmat(V)))
