"""Trace estimators against the exact trace, with tolerances from their standard errors."""

from __future__ import annotations

import math

import pytest
import torch

from hesskit.errors import InvalidArgumentError
from hesskit.estimators import exact_trace, hutchinson_trace, hutchpp_trace
from hesskit.operators.base import MatrixOperator
from known_spectra import CountingMatrix, classifier_hessian, with_spectrum


def decaying(n: int = 120) -> torch.Tensor:
    """Eigenvalues 10 / i^1.5 with a few negative ones: a few large, many small."""
    i = torch.arange(1, n + 1, dtype=torch.float64)
    values = 10.0 / i**1.5
    values[-5:] *= -1
    return with_spectrum(values)


def test_exact_trace_is_the_sum_of_the_diagonal_and_costs_n_products():
    A = decaying(70)
    op = CountingMatrix(A)
    result = exact_trace(op, chunk_size=16)
    assert result.value == pytest.approx(float(torch.trace(A)), abs=1e-12)
    assert result.stderr == 0.0 and result.products == op.products == 70


@pytest.mark.parametrize("probes", [10, 100, 1000])
def test_hutchinson_trace_is_within_four_standard_errors(probes):
    A = decaying()
    result = hutchinson_trace(MatrixOperator(A), probes, seed=1)
    assert result.products == probes
    assert abs(result.value - float(torch.trace(A))) <= 4 * result.stderr


def test_hutchinson_standard_error_matches_the_rademacher_variance():
    # per-probe variance of zᵀAz for Rademacher z: 2 (‖A‖_F² − Σ A_ii²)
    A = decaying()
    variance = 2 * float((A**2).sum() - (torch.diagonal(A) ** 2).sum())
    result = hutchinson_trace(MatrixOperator(A), 2000, seed=2)
    ratio = result.stderr / math.sqrt(variance / 2000)
    # the sample std of 2000 draws is within ~±10% here (relative sd ≈ √((2+κ)/(4·2000)))
    assert 0.85 < ratio < 1.15


def test_diagonal_matrix_trace_is_exact_for_hutchinson():
    A = torch.diag(torch.linspace(-1.0, 3.0, 40, dtype=torch.float64))
    result = hutchinson_trace(MatrixOperator(A), 5)
    assert result.value == pytest.approx(float(torch.trace(A)), abs=1e-12)
    assert result.stderr == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("products", [12, 60, 240])
def test_hutchpp_trace_is_within_four_standard_errors_and_counts_products(products):
    A = decaying()
    op = CountingMatrix(A)
    result = hutchpp_trace(op, products, seed=3)
    assert result.products == op.products == products
    assert abs(result.value - float(torch.trace(A))) <= 4 * result.stderr


def test_hutchpp_has_smaller_error_than_hutchinson_on_a_decaying_spectrum():
    A = decaying()
    plain = hutchinson_trace(MatrixOperator(A), 60, seed=4)
    sketched = hutchpp_trace(MatrixOperator(A), 60, seed=4)
    assert sketched.stderr < plain.stderr / 3


def test_hutchpp_is_exact_when_the_sketch_spans_the_range():
    low_rank = with_spectrum([5.0, -2.0, 1.0] + [0.0] * 47)
    op = CountingMatrix(low_rank)
    result = hutchpp_trace(op, 12)  # sketch of 4 ≥ rank 3: the residual (I−QQᵀ)A(I−QQᵀ) is 0
    assert result.value == pytest.approx(4.0, abs=1e-10)
    assert result.stderr == pytest.approx(0.0, abs=1e-10)
    # A Q needs only rank(A S) = 3 columns
    assert result.products == op.products == 4 + 3 + 4


def test_hutchpp_on_a_tiny_matrix_is_exact_with_zero_stderr():
    A = with_spectrum([2.0, -1.0, 0.5])
    result = hutchpp_trace(MatrixOperator(A), 9)
    assert result.value == pytest.approx(1.5, abs=1e-12) and result.stderr == 0.0
    assert result.products == 6  # the residual probes are skipped


def test_hutchpp_trace_of_a_network_hessian():
    H = classifier_hessian()
    result = hutchpp_trace(MatrixOperator(H), 30, seed=5)
    assert abs(result.value - float(torch.trace(H))) <= 4 * result.stderr


def test_same_seed_same_estimate():
    A = decaying()
    first = hutchpp_trace(MatrixOperator(A), 30, seed=9)
    second = hutchpp_trace(MatrixOperator(A), 30, generator=torch.Generator().manual_seed(9))
    assert first == second


def test_budget_errors_name_the_minimum():
    op = MatrixOperator(torch.eye(4, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="products must be an integer of at least 6"):
        hutchpp_trace(op, 5)
    with pytest.raises(InvalidArgumentError, match="probes must be an integer of at least 2"):
        hutchinson_trace(op, 1)
