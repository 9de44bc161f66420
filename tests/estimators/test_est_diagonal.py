"""Hutchinson diagonal against the exact diagonal, with tolerances from its standard errors."""

from __future__ import annotations

import pytest
import torch

from hesskit.errors import InvalidArgumentError
from hesskit.estimators import hutchinson_diagonal
from hesskit.operators.base import MatrixOperator
from known_spectra import CountingMatrix, regression_hessian


def random_symmetric(n: int = 30, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return (B + B.T) / 2 + torch.diag(torch.linspace(1.0, 6.0, n, dtype=torch.float64))


@pytest.mark.parametrize("probes", [20, 200, 2000])
def test_every_entry_is_within_four_standard_errors(probes):
    A = random_symmetric()
    result = hutchinson_diagonal(MatrixOperator(A), probes, chunk_size=7, seed=1)
    error = (result.value - torch.diagonal(A)).abs()
    assert bool((error <= 4 * result.stderr).all())
    assert result.products == probes


def test_error_shrinks_as_probes_grow():
    A = random_symmetric()
    errors = [
        float(torch.linalg.vector_norm(
            hutchinson_diagonal(MatrixOperator(A), probes, seed=2).value - torch.diagonal(A)
        ))
        for probes in (10, 1000)
    ]
    assert errors[1] < errors[0] / 3  # √100 = 10 in expectation


def test_standard_error_matches_the_closed_form_variance():
    # Var(z_i (Az)_i) = Σ_{j≠i} A_ij² for Rademacher z
    A = random_symmetric()
    variance = (A**2).sum(dim=1) - torch.diagonal(A) ** 2
    probes = 1000
    result = hutchinson_diagonal(MatrixOperator(A), probes, chunk_size=64, seed=3)
    ratio = (result.stderr**2 * probes / variance).mean()
    # mean over 30 entries of sample-variance ratios, each with relative sd ≈ √(2/1000)
    assert 0.95 < float(ratio) < 1.05


def test_diagonal_matrix_is_recovered_exactly_with_zero_stderr():
    A = torch.diag(torch.linspace(-2.0, 2.0, 15, dtype=torch.float64))
    result = hutchinson_diagonal(MatrixOperator(A), 3)
    torch.testing.assert_close(result.value, torch.diagonal(A), rtol=0, atol=1e-14)
    assert float(result.stderr.max()) == 0.0 and result.relative_stderr() == 0.0


def test_chunking_does_not_change_the_products_or_the_statistics():
    A = random_symmetric()
    op = CountingMatrix(A)
    chunked = hutchinson_diagonal(op, 50, chunk_size=7, seed=4)
    whole = hutchinson_diagonal(MatrixOperator(A), 50, chunk_size=50, seed=4)
    assert op.products == chunked.products == 50
    # the chunks draw different probes, so compare each with the closed-form variance
    variance = (A**2).sum(dim=1) - torch.diagonal(A) ** 2
    for result in (chunked, whole):
        assert bool(((result.value - torch.diagonal(A)).abs() <= 5 * (variance / 50).sqrt()).all())


def test_hessian_diagonal_of_a_small_network():
    H = regression_hessian()
    result = hutchinson_diagonal(MatrixOperator(H), 400, seed=5)
    assert bool(((result.value - torch.diagonal(H)).abs() <= 4 * result.stderr + 1e-12).all())
    assert 0 < result.relative_stderr() < 1


def test_one_probe_is_refused_with_the_reason():
    with pytest.raises(InvalidArgumentError, match="probes must be an integer of at least 2"):
        hutchinson_diagonal(MatrixOperator(torch.eye(3, dtype=torch.float64)), 1)
