"""Thick-restart Lanczos on a capped basis against numpy.linalg.eigvalsh, and its budget check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_est_lanczos import assert_eigenpairs_match

from hesskit.errors import InvalidArgumentError, TooLargeError
from hesskit.estimators import top_eigenpairs
from hesskit.estimators.lanczos import lanczos_vectors
from hesskit.operators.base import MatrixOperator
from known_spectra import CountingMatrix, classifier_hessian, with_spectrum

# outliers at both ends of a bulk, like an indefinite network Hessian
SPECTRUM = np.concatenate([[40.0, 25.0, 18.0, 12.0, 9.0], np.linspace(-0.5, 1.0, 290),
                           [-3.0, -2.5, -2.0, -1.5, -1.2]])


@pytest.mark.parametrize("which", ["largest", "smallest"])
@pytest.mark.parametrize(("k", "max_vectors"), [(1, 3), (3, 5), (3, 8), (5, 12)])
def test_restarted_lanczos_matches_eigvalsh_with_few_stored_vectors(which, k, max_vectors):
    A = with_spectrum(SPECTRUM, seed=5)
    ordered = np.sort(np.linalg.eigvalsh(A.numpy()))
    expected = ordered[::-1][:k] if which == "largest" else ordered[:k]
    op = CountingMatrix(A)
    result = top_eigenpairs(op, k, which=which, tol=1e-8, max_vectors=max_vectors,
                            max_products=2000, return_vectors=True)
    assert result.converged
    assert result.products == op.products > max_vectors  # it had to restart
    assert_eigenpairs_match(A, result, expected, 1e-8)


def test_restarted_lanczos_finds_top_and_bottom_of_a_network_hessian():
    H = classifier_hessian()
    expected = np.linalg.eigvalsh(H.numpy())
    top = top_eigenpairs(MatrixOperator(H), 3, tol=1e-8, max_vectors=6, max_products=1000,
                         return_vectors=True)
    bottom = top_eigenpairs(MatrixOperator(H), 2, which="smallest", tol=1e-6, max_vectors=5,
                            max_products=1000, return_vectors=True)
    assert top.converged and bottom.converged
    assert_eigenpairs_match(H, top, expected[::-1][:3], 1e-8)
    assert_eigenpairs_match(H, bottom, expected[:2], 1e-6)


def test_clustered_eigenvalues_are_resolved_on_a_capped_basis():
    cluster = [5.0, 5.0 + 1e-4, 5.0 + 2e-4, 5.0 + 3e-4]
    A = with_spectrum(np.concatenate([cluster, np.linspace(-1.0, 1.0, 60)]), seed=2)
    result = top_eigenpairs(MatrixOperator(A), 4, tol=1e-8, max_vectors=6, max_products=500)
    assert result.converged and result.products > 6
    np.testing.assert_allclose(result.values.numpy(), cluster[::-1], rtol=1e-8)


def test_repeated_eigenvalue_keeps_its_multiplicity_when_the_krylov_space_is_exhausted():
    # four distinct eigenvalues: each new Krylov block (4 vectors) is exhausted within a
    # basis of 10 beside the 5 kept Ritz vectors, though the basis holds less than N = 14
    A = with_spectrum([5.0, 5.0, 5.0, 1.0, 1.0, 0.5, 0.25] * 2, seed=3)
    result = top_eigenpairs(MatrixOperator(A), 5, tol=1e-8, max_vectors=10, max_products=500)
    assert result.converged
    np.testing.assert_allclose(result.values.numpy(), [5.0] * 5, rtol=1e-10)


def test_a_basis_that_holds_the_whole_run_gives_plain_lanczos_bit_for_bit():
    A = with_spectrum(SPECTRUM, seed=5)
    default = top_eigenpairs(MatrixOperator(A), 3, tol=1e-6)
    explicit = top_eigenpairs(MatrixOperator(A), 3, tol=1e-6, max_vectors=101)
    assert torch.equal(default.values, explicit.values) and default.products == explicit.products


def test_same_seed_gives_the_same_bits_after_restarts():
    A = with_spectrum(SPECTRUM, seed=5).float()
    first = top_eigenpairs(MatrixOperator(A), 2, max_vectors=4, max_products=400, seed=3)
    second = top_eigenpairs(MatrixOperator(A), 2, max_vectors=4, max_products=400, seed=3)
    assert torch.equal(first.values, second.values) and first.products == second.products
    assert first.vectors is None  # only when asked for


def test_the_budget_sets_the_basis_and_a_tiny_budget_is_refused_in_one_line():
    A = with_spectrum(SPECTRUM, seed=5)  # N = 300: one vector is 2,400 bytes in float64
    vector = 300 * 8
    result = top_eigenpairs(CountingMatrix(A), 1, tol=1e-6, memory_budget=7 * vector,
                            reorthogonalize=True)
    assert result.converged  # 7 vectors: a basis of 5 plus the 2 work vectors
    assert lanczos_vectors(1, 5, return_vectors=False) == 7
    with pytest.raises(TooLargeError, match=(
        r"^top_eigenpairs \(k = 1, max_vectors = 3\) for N = 300 parameters holds 5 vectors "
        r"of N float64 numbers, 12.0 KB, but the memory budget is 9.6 KB; pass a memory_budget "
        r"of at least 12.0 KB \(k \+ 4 N-vectors\), or ask for fewer eigenpairs$"
    )):
        top_eigenpairs(MatrixOperator(A), 1, memory_budget=4 * vector, reorthogonalize=True)
    with pytest.raises(TooLargeError, match=r"max_vectors = 30\).* pass max_vectors=8 \(the most"):
        top_eigenpairs(MatrixOperator(A), 1, max_vectors=30, memory_budget=10 * vector)


def test_too_few_vectors_are_refused():
    with pytest.raises(InvalidArgumentError, match=r"max_vectors must be an integer of at least 4"):
        top_eigenpairs(MatrixOperator(with_spectrum(SPECTRUM)), 2, max_vectors=3)
