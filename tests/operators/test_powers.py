"""``operator_power``: A^p of structured SPD operators against Q diag(λ^p) Qᵀ of the dense
matrix; ``SandwichOperator`` S A S."""

from __future__ import annotations

import pytest
import torch

from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.operators import (
    DampedOperator,
    DiagonalOperator,
    KFACOperator,
    MatrixOperator,
    SandwichOperator,
    ScaledOperator,
    SumOperator,
    operator_power,
    symmetric_power,
)
from hesskit.operators.kfac_factors import KroneckerFactors, LinearBlock

F64 = torch.float64


def spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n, generator=g, dtype=F64)
    return X @ X.T + 0.5 * torch.eye(n, dtype=F64)


def dense_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.pow(power)) @ vectors.T


def dense(op) -> torch.Tensor:
    return op.matmat(torch.eye(op.shape[0], dtype=op.dtype))


LAYOUT = ParameterLayout(("w", "b", "gain"), (torch.Size([2, 3]), torch.Size([2]),
                                               torch.Size([1])))


def kfac() -> KFACOperator:
    """One 3 → 2 layer with bias (A 4×4, G 2×2, non-square so a swap of A and G fails)
    and an uncovered gain."""
    block = LinearBlock(module="layer", weight="w", bias="b", in_features=3, out_features=2)
    return KFACOperator(LAYOUT, [block], {"w": KroneckerFactors(spd(4, 1), spd(2, 2))},
                        F64, torch.device("cpu"))


@pytest.mark.parametrize("power", [1.0, -1.0, -0.5, 0.25])
def test_powers_of_each_structure_equal_the_dense_power(power):
    d = torch.tensor([0.5, 2.0, 3.0, 1.5, 4.0, 0.25, 1.0, 2.5, 0.75], dtype=F64)
    M = spd(9, 3)
    gain = torch.zeros(9, dtype=F64)
    gain[-1] = 7.0
    operators = [
        DiagonalOperator(d, LAYOUT),
        MatrixOperator(M, LAYOUT),
        ScaledOperator(MatrixOperator(M, LAYOUT), 2.5),
        SumOperator([kfac(), DiagonalOperator(gain, LAYOUT)]),  # K-FAC's P: Kron. + γ²I
    ]
    for op in operators:
        expected = dense_power(dense(op), power)
        torch.testing.assert_close(dense(operator_power(op, power)), expected, rtol=1e-10,
                                   atol=1e-12)


def test_a_kfac_operator_alone_is_powered_on_its_layers_and_zero_elsewhere():
    op = kfac()
    powered = dense(operator_power(op, 0.5))
    expected = dense_power(dense(op)[:8, :8], 0.5)
    torch.testing.assert_close(powered[:8, :8], expected, rtol=1e-10, atol=1e-12)
    assert float(powered[8].abs().max()) == 0
    with pytest.raises(InvalidArgumentError, match="singular"):
        operator_power(op, -0.5)  # zero on the gain


def test_overlapping_terms_and_unknown_structures_are_refused():
    d = torch.ones(9, dtype=F64)
    with pytest.raises(InvalidArgumentError, match="shared parameters"):
        operator_power(SumOperator([kfac(), DiagonalOperator(d, LAYOUT)]), -0.5)
    with pytest.raises(InvalidArgumentError, match="no cheap power of a DampedOperator"):
        operator_power(DampedOperator(MatrixOperator(spd(9, 4), LAYOUT), 1.0), -0.5)
    with pytest.raises(InvalidArgumentError, match="positive-definite"):
        symmetric_power(torch.diag(torch.tensor([1.0, 0.0], dtype=F64)), -1.0)


def test_sandwich_is_s_a_s():
    S, A = spd(5, 5), spd(5, 6)
    op = SandwichOperator(MatrixOperator(S), MatrixOperator(A))
    torch.testing.assert_close(dense(op), S @ A @ S, rtol=1e-12, atol=1e-12)
