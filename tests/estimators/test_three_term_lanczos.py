"""top_eigenpairs without reorthogonalisation (5 N-vectors): against numpy.linalg.eigvalsh,
with the ghost copies that the loss of orthogonality creates merged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import eigh_tridiagonal

from hesskit.errors import InvalidArgumentError, TooLargeError
from hesskit.estimators import top_eigenpairs
from hesskit.estimators.ghost_filter import distinct_ritz_values
from hesskit.estimators.recurrence import ThreeTermRecurrence
from hesskit.operators.base import MatrixOperator
from known_spectra import CountingMatrix, classifier_hessian, with_spectrum

SPECTRUM = np.concatenate([[40.0, 25.0, 18.0, 12.0, 9.0], np.linspace(-0.5, 1.0, 290),
                           [-3.0, -2.5, -2.0, -1.5, -1.2]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["largest", "smallest"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_three_term_lanczos_matches_eigvalsh(which, k, dtype):
    A = with_spectrum(SPECTRUM, seed=5)
    ordered = np.sort(np.linalg.eigvalsh(A.numpy()))
    expected = ordered[::-1][:k] if which == "largest" else ordered[:k]
    op = CountingMatrix(A.to(dtype))
    tol = 1e-8 if dtype == torch.float64 else 1e-3
    result = top_eigenpairs(op, k, which=which, tol=tol, reorthogonalize=False,
                            max_products=2000)
    assert result.converged and result.vectors is None
    assert result.products == op.products
    values = result.values.double().numpy()
    rounding = 1e-12 if dtype == torch.float64 else 1e-4  # A itself is rounded to float32
    np.testing.assert_array_less(np.abs(values - expected), tol * np.abs(expected) + rounding)
    bounds = result.error_bounds.double().numpy()
    np.testing.assert_array_less(np.abs(values - expected), bounds + rounding)


def test_ghost_copies_of_converged_eigenvalues_are_counted_once():
    # long enough for the loss of orthogonality to copy the outliers: T_m holds ghosts
    A = with_spectrum(SPECTRUM, seed=5)
    recurrence = ThreeTermRecurrence(MatrixOperator(A), torch.randn(300, 1, dtype=A.dtype,
                                     generator=torch.Generator().manual_seed(0)))
    for _ in range(150):
        recurrence.step()
    alphas, betas = recurrence.tridiagonal()
    theta = eigh_tridiagonal(alphas, betas, eigvals_only=True)
    assert np.sum(np.abs(theta - 40.0) < 1e-8) >= 2  # the test sees real ghosts
    values, _, _ = distinct_ritz_values(alphas, betas, float(recurrence.betas[-1][0]),
                                          float(torch.finfo(A.dtype).eps))
    top = np.sort(values)[::-1][:5]
    np.testing.assert_allclose(top, [40.0, 25.0, 18.0, 12.0, 9.0], rtol=1e-10)
    result = top_eigenpairs(MatrixOperator(A), 5, tol=1e-12, reorthogonalize=False,
                            max_products=150)
    np.testing.assert_allclose(result.values.numpy(), [40.0, 25.0, 18.0, 12.0, 9.0], rtol=1e-10)


def test_three_term_lanczos_on_a_network_hessian_needs_about_the_products_of_a_basis():
    H = classifier_hessian()
    expected = np.linalg.eigvalsh(H.numpy())[::-1][:2]
    plain = top_eigenpairs(MatrixOperator(H), 2, tol=1e-8, reorthogonalize=False)
    kept = top_eigenpairs(MatrixOperator(H), 2, tol=1e-8, reorthogonalize=True)
    assert plain.converged and kept.converged
    np.testing.assert_allclose(plain.values.numpy(), expected, rtol=1e-8)
    assert plain.products <= kept.products + 5  # the rounding term m ε ‖T‖ of its bounds


def test_the_default_drops_the_basis_only_where_the_budget_cannot_hold_the_run():
    A = with_spectrum(SPECTRUM, seed=5)
    vector = 300 * 8
    small = top_eigenpairs(CountingMatrix(A), 1, tol=1e-6, memory_budget=8 * vector)
    large = top_eigenpairs(CountingMatrix(A), 1, tol=1e-6)
    explicit = top_eigenpairs(CountingMatrix(A), 1, tol=1e-6, reorthogonalize=False)
    assert torch.equal(small.values, explicit.values) and small.products == explicit.products
    assert large.converged and small.converged
    np.testing.assert_allclose(small.values.numpy(), large.values.numpy(), rtol=1e-6)
    # eigenvectors need a basis: with a small budget that is a thick-restart run
    vectors = top_eigenpairs(CountingMatrix(A), 1, tol=1e-6, memory_budget=8 * vector,
                             return_vectors=True)
    assert vectors.vectors is not None and vectors.vectors.shape == (300, 1)


def test_settings_that_need_a_basis_or_do_not_fit_are_refused_in_one_line():
    A = MatrixOperator(with_spectrum(SPECTRUM, seed=5))
    with pytest.raises(InvalidArgumentError, match=r"^return_vectors=True needs a basis"):
        top_eigenpairs(A, 1, reorthogonalize=False, return_vectors=True)
    with pytest.raises(InvalidArgumentError, match=r"^max_vectors needs a basis"):
        top_eigenpairs(A, 1, reorthogonalize=False, max_vectors=5)
    with pytest.raises(TooLargeError,
                       match=r"three-term.*pass a memory_budget of at least 12.0 KB$"):
        top_eigenpairs(A, 1, reorthogonalize=False, memory_budget=4 * 300 * 8)


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_a_warm_start_near_the_top_eigenvector_converges_in_a_few_products(reorthogonalize):
    A = with_spectrum(SPECTRUM, seed=5)
    _, U = np.linalg.eigh(A.numpy())
    noise = np.random.default_rng(0).standard_normal(300)
    near = torch.from_numpy(U[:, -1] + 1e-6 * noise)  # the top eigenvector, perturbed
    warm = top_eigenpairs(MatrixOperator(A), 1, tol=1e-8, start=near, min_products=3,
                          reorthogonalize=reorthogonalize)
    cold = top_eigenpairs(MatrixOperator(A), 1, tol=1e-8, reorthogonalize=reorthogonalize)
    assert warm.converged and warm.products <= 8 < 20 <= cold.products
    np.testing.assert_allclose(warm.values.numpy(), [40.0], rtol=1e-8)


def test_a_bad_start_is_refused_in_one_line():
    A = MatrixOperator(with_spectrum(SPECTRUM, seed=5))
    with pytest.raises(InvalidArgumentError, match=r"^start must be a tensor of shape \[300\]"):
        top_eigenpairs(A, 1, start=torch.ones(299, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="finite and non-zero"):
        top_eigenpairs(A, 1, start=torch.zeros(300, dtype=torch.float64))
