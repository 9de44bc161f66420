"""SciPy's eigsh, cg and minres run unchanged on the exported operators (vs dense numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import cg, eigsh, minres
from test_op_cases import make_case

from hesskit.operators import damped, gauss_newton_operator, hessian_operator
from reference import autograd_gauss_newton, autograd_hessian


@pytest.fixture(scope="module")
def case():
    problem, model, loss_fn, X, y = make_case("bce", "mean", batch_sizes=(5, 3), sizes=(3, 5, 3))
    H = autograd_hessian(model, loss_fn, X, y).numpy()
    G = autograd_gauss_newton(model, loss_fn, X, y).numpy()
    return problem, H, G


def test_eigsh_finds_the_top_eigenvalues_of_the_hessian(case):
    problem, H, _ = case
    values = eigsh(hessian_operator(problem).to_scipy(), k=3, which="LA", tol=1e-12)[0]
    np.testing.assert_allclose(np.sort(values), np.linalg.eigvalsh(H)[-3:], rtol=1e-8)


def test_cg_solves_the_damped_gauss_newton_system(case):
    problem, _, G = case
    damping = 1e-2
    b = np.random.default_rng(0).standard_normal(G.shape[0])
    A = damped(gauss_newton_operator(problem), damping).to_scipy()
    x, info = cg(A, b, rtol=1e-12, maxiter=2000)
    assert info == 0
    expected = np.linalg.solve(G + damping * np.eye(len(b)), b)
    np.testing.assert_allclose(x, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())


def test_minres_solves_the_indefinite_shifted_hessian_system(case):
    problem, H, _ = case
    shift = 0.5 * np.abs(np.linalg.eigvalsh(H)).max()
    b = np.random.default_rng(1).standard_normal(H.shape[0])
    A = damped(hessian_operator(problem), -shift)  # H − σI: indefinite, nonsingular
    x, info = minres(A.to_scipy(), b, rtol=1e-13, maxiter=5000)
    assert info == 0
    expected = np.linalg.solve(H - shift * np.eye(len(b)), b)
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max())
