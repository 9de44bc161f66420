"""Conjugate gradient against numpy.linalg.solve, SciPy's cg and closed forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hesskit.errors import InvalidArgumentError
from hesskit.operators.base import MatrixOperator
from hesskit.solvers import Status, StopRule, conjugate_gradient, geometric_snapshots

DTYPE = torch.float64


def spd_matrix(n: int, condition: float = 100.0, seed: int = 0) -> torch.Tensor:
    """Q diag(λ) Qᵀ with eigenvalues log-spaced in [1, condition]."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    eigenvalues = torch.logspace(0, np.log10(condition), n, dtype=DTYPE)
    return q @ torch.diag(eigenvalues) @ q.T


def rhs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def model_value(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> float:
    return float(0.5 * x @ A @ x - b @ x)


def test_cg_on_spd_matrix_matches_numpy_solve_and_scipy_cg():
    A, b = spd_matrix(30), rhs(30)
    result = conjugate_gradient(MatrixOperator(A, psd=True), b, rtol=1e-12, maxiter=200)
    exact = np.linalg.solve(A.numpy(), b.numpy())
    scipy_x, info = scipy.sparse.linalg.cg(A.numpy(), b.numpy(), rtol=1e-12, maxiter=200)
    assert result.status is Status.CONVERGED and info == 0
    np.testing.assert_allclose(result.x.numpy(), exact, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.x.numpy(), scipy_x, rtol=0, atol=1e-9)
    assert result.products == result.iterations


def test_preconditioned_cg_matches_numpy_solve_and_takes_fewer_iterations():
    A = spd_matrix(30, condition=1e4)
    scales = torch.logspace(-2, 2, 30, dtype=DTYPE)
    A = scales[:, None] * A * scales[None, :]  # badly scaled: Jacobi helps
    b = rhs(30)
    diag = torch.diagonal(A)
    plain = conjugate_gradient(MatrixOperator(A), b, rtol=1e-10, maxiter=2000)
    jacobi = conjugate_gradient(
        MatrixOperator(A), b, rtol=1e-10, maxiter=2000, M=lambda r: r / diag
    )
    exact = torch.linalg.solve(A, b)
    assert jacobi.status is Status.CONVERGED
    torch.testing.assert_close(jacobi.x, exact, rtol=1e-6, atol=0)
    assert jacobi.iterations < plain.iterations


def test_quadratic_model_values_decrease_monotonically_and_match_the_closed_form():
    A, b = spd_matrix(25, condition=1e3), rhs(25)
    iterates = []
    result = conjugate_gradient(
        MatrixOperator(A), b, rtol=1e-10, callback=lambda x: iterates.append(x.clone())
    )
    values = result.model_values
    assert values[0] == 0.0
    assert all(later < earlier for earlier, later in itertools.pairwise(values))
    for x, value in zip(iterates, values[1:], strict=True):
        assert value == pytest.approx(model_value(A, b, x), rel=1e-10, abs=1e-12)


def test_zero_rhs_returns_zero_without_products():
    A = spd_matrix(5)
    result = conjugate_gradient(MatrixOperator(A), torch.zeros(5, dtype=DTYPE))
    assert result.status is Status.CONVERGED
    assert (result.iterations, result.products) == (0, 0)
    assert torch.equal(result.x, torch.zeros(5, dtype=DTYPE))


def test_exact_starting_point_stops_after_one_product():
    A, b = spd_matrix(8), rhs(8)
    exact = torch.linalg.solve(A, b)
    result = conjugate_gradient(MatrixOperator(A), b, x0=exact, rtol=1e-8)
    assert result.status is Status.CONVERGED
    assert (result.iterations, result.products) == (0, 1)
    assert torch.equal(result.x, exact)


def test_exact_preconditioner_converges_in_one_iteration():
    A, b = spd_matrix(12, condition=1e3), rhs(12)
    inverse = torch.linalg.inv(A)
    result = conjugate_gradient(MatrixOperator(A), b, rtol=1e-8, M=MatrixOperator(inverse))
    assert result.status is Status.CONVERGED
    assert result.iterations == 1
    torch.testing.assert_close(result.x, torch.linalg.solve(A, b), rtol=1e-9, atol=0)


def test_iteration_cap_is_reported_with_a_remedy():
    A, b = spd_matrix(20, condition=1e4), rhs(20)
    result = conjugate_gradient(MatrixOperator(A), b, rtol=1e-12, maxiter=3)
    assert result.status is Status.MAX_ITERATIONS and result.iterations == 3
    assert "raise maxiter" in result.status.value
    assert not result.success


def test_martens_rule_stops_exactly_when_relative_progress_falls_below_k_epsilon():
    A, b = spd_matrix(200, condition=1e6), rhs(200)
    eps = 5e-3  # larger than Martens' 5e-4 so that the rule fires well before N
    result = conjugate_gradient(
        MatrixOperator(A), b, maxiter=200, stop=StopRule.MARTENS, progress_tol=eps
    )
    assert result.status is Status.PROGRESS_STALLED

    def rule_holds(values, i):  # HFDemo conjgrad_1.m lines 66-67, 80, written out again
        k = max(10, -(-i // 10))  # ceil(0.1 i) in integers
        return i > k and values[i - k] < 0 and (values[i] - values[i - k]) / values[i] < k * eps

    values = result.model_values
    assert rule_holds(values, result.iterations)
    assert not any(rule_holds(values, i) for i in range(1, result.iterations))


def test_snapshots_are_the_iterates_at_the_requested_iterations_plus_the_last():
    A, b = spd_matrix(40, condition=1e4), rhs(40)
    iterates = {}

    def remember(x):
        iterates[len(iterates) + 1] = x.clone()

    wanted = geometric_snapshots(40)
    result = conjugate_gradient(
        MatrixOperator(A), b, rtol=1e-6, snapshot_at=wanted, callback=remember
    )
    kept = [i for i, _ in result.snapshots]
    assert kept == [i for i in wanted if i <= result.iterations] + (
        [] if result.iterations in wanted else [result.iterations]
    )
    for i, x in result.snapshots:
        assert torch.equal(x, iterates[i])


def test_geometric_snapshot_iterations_are_ceil_of_powers_of_1_3():
    expected = sorted({int(np.ceil(1.3**j - 1e-9)) for j in range(30) if 1.3**j <= 50})
    assert list(geometric_snapshots(50)) == expected
    with pytest.raises(InvalidArgumentError, match="growth must be > 1"):
        geometric_snapshots(10, growth=1.0)


def test_negative_curvature_at_the_first_iteration_steps_downhill():
    A = -torch.eye(4, dtype=DTYPE)
    b = rhs(4)
    result = conjugate_gradient(MatrixOperator(A), b)
    assert result.status is Status.NEGATIVE_CURVATURE
    assert result.negative_curvature is not None
    assert model_value(A, b, result.x) < 0.0  # φ(x0 = 0) = 0
    assert result.model_values[-1] == pytest.approx(model_value(A, b, result.x), rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), negatives=st.integers(1, 3))
def test_cg_on_an_indefinite_matrix_never_increases_the_quadratic_model(seed, negatives):
    gen = torch.Generator().manual_seed(seed)
    n = 8
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    eigenvalues = torch.rand(n, generator=gen, dtype=DTYPE) + 0.1
    eigenvalues[:negatives] *= -1
    A = q @ torch.diag(eigenvalues) @ q.T
    b = torch.randn(n, generator=gen, dtype=DTYPE)
    x0 = 0.1 * torch.randn(n, generator=gen, dtype=DTYPE)
    result = conjugate_gradient(MatrixOperator(A), b, x0=x0, rtol=1e-12)
    assert model_value(A, b, result.x) <= model_value(A, b, x0) + 1e-12
    values = result.model_values
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(values))


def test_non_finite_product_returns_the_last_finite_iterate():
    A, b = spd_matrix(6), rhs(6)
    calls = []

    def product(v):
        calls.append(1)
        return A @ v if len(calls) < 3 else torch.full_like(v, float("nan"))

    result = conjugate_gradient(product, b, rtol=1e-12)
    assert result.status is Status.NON_FINITE
    assert result.iterations == 2
    assert bool(torch.isfinite(result.x).all())
    assert "NaN or infinite" in result.status.value


def test_operator_and_function_give_identical_iterates():
    A, b = spd_matrix(10), rhs(10)
    a = conjugate_gradient(MatrixOperator(A), b, rtol=1e-10)
    f = conjugate_gradient(lambda v: A @ v, b, rtol=1e-10)
    assert torch.equal(a.x, f.x) and a.model_values == f.model_values


def test_a_matrix_right_hand_side_is_refused_with_a_clear_message():
    with pytest.raises(InvalidArgumentError, match=r"b must be a flat \[N\] tensor"):
        conjugate_gradient(MatrixOperator(spd_matrix(3)), torch.ones(3, 1, dtype=DTYPE))


def test_martens_stop_alone_reports_convergence_when_the_residual_vanishes_exactly():
    # A = I: one CG step solves the system exactly, so r = 0. Only the progress rule is on,
    # which never fires on a vanished residual; CG must not divide by rᵀz = 0 or mistake the
    # zero direction that follows for negative curvature.
    A = MatrixOperator(torch.eye(4, dtype=torch.float64))
    b = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    result = conjugate_gradient(A, b, stop=StopRule.MARTENS, maxiter=10)
    assert result.status is Status.CONVERGED
    assert result.iterations == 1
    torch.testing.assert_close(result.x, b, rtol=0, atol=0)


def test_martens_stop_alone_returns_at_once_on_a_zero_right_hand_side():
    A = MatrixOperator(torch.eye(3, dtype=torch.float64))
    result = conjugate_gradient(A, torch.zeros(3, dtype=torch.float64), stop=StopRule.MARTENS)
    assert result.status is Status.CONVERGED
    assert result.products == 0
    assert not result.x.any()


def test_progress_rule_constants_are_hfdemos():
    # HFDemo conjgrad_1.m lines 4, 6, 7, 66: tolerance 5e-4, gapratio 0.1, mingap 10, ceil.
    from hesskit.solvers import cg

    assert cg.MARTENS_PROGRESS_TOL == 5e-4
    assert cg.MARTENS_GAP_RATIO == 0.1 and cg.MARTENS_MIN_GAP == 10
    assert [cg.martens_gap(i) for i in (1, 99, 100, 101, 110, 111, 250)] == [
        10, 10, 10, 11, 11, 12, 25]
    assert [cg.floor_gap(i) for i in (100, 101, 109, 110, 119, 250)] == [10, 10, 10, 11, 11, 25]


def test_progress_gap_is_rounded_up_as_hfdemo_and_down_only_on_request():
    # φ_94 = -1, φ_95..φ_105 ≈ -1.2: at i = 105 the gap ⌊10.5⌋ = 10 sees no progress since
    # φ_95 (stop), HFDemo's ⌈10.5⌉ = 11 sees the drop from φ_94 (go on).
    from hesskit.solvers.cg import _progress_stalled, floor_gap, martens_gap

    values = [0.0] + [-1.0] * 94 + [-1.2] * 10 + [-1.2001]
    assert len(values) == 106
    assert _progress_stalled(values, 5e-4, floor_gap)
    assert not _progress_stalled(values, 5e-4, martens_gap)


def test_hessian_free_uses_hfdemos_gap_and_the_previous_settings_the_old_one():
    from hesskit.optim import PREVIOUS_CG
    from hesskit.optim.hessian_free.settings import HF_CG
    from hesskit.solvers.cg import floor_gap, martens_gap

    assert HF_CG.progress_gap is martens_gap and PREVIOUS_CG.progress_gap is floor_gap
