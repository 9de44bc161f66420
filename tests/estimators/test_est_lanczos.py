"""Lanczos and power iteration against numpy.linalg.eigvalsh on matrices of known spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hesskit.errors import InvalidArgumentError
from hesskit.estimators import power_iteration, top_eigenpairs
from hesskit.operators.base import MatrixOperator
from known_spectra import CountingMatrix, classifier_hessian, with_spectrum


def decaying_spectrum(n: int = 300) -> np.ndarray:
    """A few large outliers over a bulk in [-0.5, 1], like a network Hessian."""
    bulk = np.linspace(-0.5, 1.0, n - 6)
    return np.concatenate([[40.0, 25.0, 18.0, 12.0, 9.0, 7.0], bulk])


def assert_eigenpairs_match(A: torch.Tensor, result, expected: np.ndarray, tol: float) -> None:
    values = result.values.double().numpy()
    np.testing.assert_array_less(np.abs(values - expected), tol * np.abs(expected) + 1e-12)
    V = result.vectors.double()
    true_residuals = torch.linalg.vector_norm(A @ V - V * result.values.double(), dim=0)
    # the reported residual is the Lanczos bound β_m|e_mᵀs|, equal to the true one up to rounding
    np.testing.assert_allclose(result.residuals.double(), true_residuals, rtol=1e-6, atol=1e-9)
    bounds = result.error_bounds.double().numpy()
    np.testing.assert_array_less(bounds, tol * np.abs(values) + 1e-12)
    # the reported bound really bounds the error, and never exceeds the residual (Weyl)
    np.testing.assert_array_less(np.abs(values - expected), bounds + 1e-12)
    assert bool((result.error_bounds <= result.residuals).all())
    np.testing.assert_allclose(V.T @ V, np.eye(V.shape[1]), atol=1e-8)


@pytest.mark.parametrize("k", [1, 5])
def test_largest_eigenvalues_match_eigvalsh_to_tolerance(k):
    A = with_spectrum(decaying_spectrum())
    expected = np.sort(np.linalg.eigvalsh(A.numpy()))[::-1][:k]
    result = top_eigenpairs(MatrixOperator(A), k, tol=1e-3, return_vectors=True)
    assert result.converged
    assert_eigenpairs_match(A, result, expected, 1e-3)


def test_tight_tolerance_gives_tight_eigenvalues():
    A = with_spectrum(decaying_spectrum())
    expected = np.sort(np.linalg.eigvalsh(A.numpy()))[::-1][:3]
    result = top_eigenpairs(MatrixOperator(A), 3, tol=1e-9, return_vectors=True)
    assert result.converged
    assert_eigenpairs_match(A, result, expected, 1e-9)


def test_smallest_finds_negative_eigenvalues_in_increasing_order():
    spectrum = np.concatenate([[-3.0, -2.5, -2.0], np.linspace(0.0, 1.0, 97)])
    A = with_spectrum(spectrum, seed=1)
    result = top_eigenpairs(MatrixOperator(A), 3, which="smallest", tol=1e-6,
                            return_vectors=True)
    assert result.converged
    assert_eigenpairs_match(A, result, np.array([-3.0, -2.5, -2.0]), 1e-6)


def test_clustered_eigenvalues_are_all_resolved():
    cluster = [5.0, 5.0 + 1e-4, 5.0 + 2e-4, 5.0 + 3e-4]
    A = with_spectrum(np.concatenate([cluster, np.linspace(-1.0, 1.0, 60)]), seed=2)
    result = top_eigenpairs(MatrixOperator(A), 4, tol=1e-8, max_products=64)
    assert result.converged
    np.testing.assert_allclose(result.values.numpy(), cluster[::-1], rtol=1e-8)


def test_repeated_eigenvalue_is_found_with_its_multiplicity():
    A = with_spectrum([5.0, 5.0, 5.0, 1.0, 1.0, 0.5, 0.25], seed=3)
    result = top_eigenpairs(MatrixOperator(A), 3, tol=1e-8)
    np.testing.assert_allclose(result.values.numpy(), [5.0, 5.0, 5.0], rtol=1e-10)


def test_reported_products_are_the_products_used():
    op = CountingMatrix(with_spectrum(decaying_spectrum()))
    result = top_eigenpairs(op, 5)
    assert result.products == op.products > 0


def test_power_iteration_matches_eigvalsh_and_counts_products():
    A = with_spectrum(decaying_spectrum())
    op = CountingMatrix(A)
    result = power_iteration(op, 2, tol=1e-4, max_products=400)
    assert result.converged
    assert result.products == op.products and result.products % 2 == 0
    assert_eigenpairs_match(A, result, np.array([40.0, 25.0]), 1e-4)


def test_lanczos_needs_far_fewer_products_than_power_iteration():
    # λ2/λ1 = 0.95: power iteration's error falls like 0.95^t
    A = with_spectrum(np.concatenate([[10.0, 9.5], np.linspace(-1.0, 5.0, 98)]))
    lanczos = top_eigenpairs(MatrixOperator(A), 1, tol=1e-6)
    power = power_iteration(MatrixOperator(A), 1, tol=1e-6, max_products=2000)
    assert lanczos.converged and power.converged
    assert 2 * lanczos.products < power.products


def test_k_equal_to_n_returns_the_whole_spectrum_in_n_products():
    spectrum = np.linspace(-2.0, 3.0, 12)
    op = CountingMatrix(with_spectrum(spectrum, seed=4))
    result = top_eigenpairs(op, 12)
    assert result.products == op.products == 12
    np.testing.assert_allclose(result.values.numpy(), spectrum[::-1], atol=1e-12)
    power = power_iteration(MatrixOperator(with_spectrum(spectrum, seed=4)), 12)
    np.testing.assert_allclose(np.sort(power.values.numpy()), spectrum, atol=1e-12)


def test_zero_matrix_gives_zero_eigenvalues_with_zero_residual():
    result = top_eigenpairs(MatrixOperator(torch.zeros(6, 6, dtype=torch.float64)), 2)
    assert result.converged
    assert result.values.tolist() == [0.0, 0.0] and result.residuals.tolist() == [0.0, 0.0]
    power = power_iteration(MatrixOperator(torch.zeros(6, 6, dtype=torch.float64)), 1)
    assert power.converged and power.values.tolist() == [0.0]


def test_one_by_one_matrix_takes_one_product():
    result = top_eigenpairs(MatrixOperator(torch.tensor([[-2.5]], dtype=torch.float64)),
                            return_vectors=True)
    assert result.products == 1 and result.converged
    assert result.values.tolist() == [-2.5] and abs(float(result.vectors[0, 0])) == 1.0


def test_budget_too_small_reports_not_converged():
    A = with_spectrum(decaying_spectrum())
    result = top_eigenpairs(MatrixOperator(A), 5, tol=1e-10, max_products=8)
    assert not result.converged and result.products == 8


def test_same_seed_gives_identical_results_and_float32_works():
    A = with_spectrum(decaying_spectrum()).float()
    first = top_eigenpairs(MatrixOperator(A), 2, seed=7)
    second = top_eigenpairs(MatrixOperator(A), 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.values, second.values) and first.products == second.products
    assert first.values.dtype == torch.float32
    np.testing.assert_allclose(first.values.numpy(), [40.0, 25.0], rtol=1e-3)


def test_hessian_of_small_network_top_and_bottom_eigenvalues():
    H = classifier_hessian()
    expected = np.linalg.eigvalsh(H.numpy())
    op = MatrixOperator(H)
    top = top_eigenpairs(op, 3, tol=1e-6)
    bottom = top_eigenpairs(op, 2, which="smallest", tol=1e-3)
    np.testing.assert_allclose(top.values.numpy(), expected[::-1][:3], rtol=1e-6)
    assert bottom.values[0] < 0  # a Hessian of a non-convex model is indefinite
    np.testing.assert_allclose(bottom.values.numpy(), expected[:2], rtol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"k must be an integer between 1 and the matrix size N=5"),
        ({"k": 6}, r"k must be an integer between 1 and the matrix size N=5, got 6"),
        ({"which": "LA"}, r"which must be 'largest' or 'smallest', got 'LA'"),
        ({"tol": 0.0}, r"tol must be a finite number greater than 0"),
        ({"max_products": 1, "k": 2}, r"max_products must be an integer of at least 2"),
    ],
)
def test_bad_arguments_raise_one_line_errors(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        top_eigenpairs(MatrixOperator(torch.eye(5, dtype=torch.float64)), **kwargs)
