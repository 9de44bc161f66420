"""Sums, scalings, damping, diagonal and counting operators against their dense matrices."""

from __future__ import annotations

import math

import pytest
import torch

from hesskit.errors import InvalidArgumentError
from hesskit.operators import (
    CountingOperator,
    DiagonalOperator,
    MatrixOperator,
    ScaledOperator,
    SumOperator,
    damped,
)

TOL = dict(rtol=1e-12, atol=1e-12)


def random_symmetric(n: int, seed: int, psd: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    return A @ A.T if psd else A + A.T


def test_damped_operator_is_a_plus_lambda_identity_and_tracks_damping_changes():
    A = random_symmetric(5, 0, psd=True)
    op = damped(MatrixOperator(A, psd=True), 0.3)
    torch.testing.assert_close(op.to_dense(), A + 0.3 * torch.eye(5, dtype=A.dtype), **TOL)
    assert op.psd and op.symmetric
    op.damping = -1.0
    torch.testing.assert_close(op.to_dense(), A - torch.eye(5, dtype=A.dtype), **TOL)
    assert not op.psd


@pytest.mark.parametrize("bad", [math.nan, math.inf, "1"])
def test_non_finite_damping_is_refused(bad):
    with pytest.raises(InvalidArgumentError, match="damping must be a finite number"):
        damped(MatrixOperator(torch.eye(2, dtype=torch.float64)), bad)


def test_scaled_and_sum_operators_match_the_dense_arithmetic():
    A, B = random_symmetric(4, 1, psd=True), random_symmetric(4, 2)
    a, b = MatrixOperator(A, psd=True), MatrixOperator(B)
    torch.testing.assert_close(ScaledOperator(a, -2.5).to_dense(), -2.5 * A, **TOL)
    torch.testing.assert_close(SumOperator([a, b, a]).to_dense(), 2 * A + B, **TOL)
    assert ScaledOperator(a, 2.0).psd and not ScaledOperator(a, -2.0).psd
    assert SumOperator([a, a]).psd and not SumOperator([a, b]).psd


def test_sum_of_operators_of_different_sizes_is_refused():
    a = MatrixOperator(torch.eye(2, dtype=torch.float64))
    b = MatrixOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="cannot add operators of shapes"):
        SumOperator([a, b])


def test_diagonal_operator_is_diag_and_knows_its_sign():
    d = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(DiagonalOperator(d).to_dense(), torch.diag(d), **TOL)
    assert DiagonalOperator(d).psd and not DiagonalOperator(-d).psd
    with pytest.raises(InvalidArgumentError, match="one entry per parameter"):
        DiagonalOperator(d, layout=MatrixOperator(torch.eye(2)).layout)


def test_counting_operator_counts_columns_calls_and_time_and_changes_nothing():
    A = random_symmetric(6, 3)
    op = CountingOperator(MatrixOperator(A))
    x = torch.ones(6, dtype=torch.float64)
    torch.testing.assert_close(op @ x, A @ x, **TOL)
    op.matmat(torch.ones(6, 4, dtype=torch.float64))
    assert (op.products, op.calls) == (5, 2)
    assert op.seconds > 0
    op.to_dense(chunk_size=4)
    assert (op.products, op.calls) == (11, 4)
    op.reset()
    assert (op.products, op.calls, op.seconds) == (0, 0, 0.0)
