"""1-D Newton: exact statuses on functions whose behaviour is known by hand."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from scipy.optimize import brentq
from scipy.special import expit
from torch.nn.functional import gelu, silu, softplus

from hesskit.errors import InvalidArgumentError
from hesskit.newton import NewtonStatus, diagnose_activation, newton


def softplus_plus_half_square(x):
    return softplus(x) + 0.5 * x**2


def test_quadratic_converges_in_one_step_with_autograd_and_with_closed_forms():
    by_autograd = newton(lambda x: 2.0 * (x - 3.0) ** 2 + 1.0, -7.0)
    by_formula = newton(
        lambda x: 2.0 * (x - 3.0) ** 2 + 1.0,
        -7.0,
        df=lambda x: 4.0 * (x - 3.0),
        d2f=lambda x: torch.tensor(4.0, dtype=torch.float64),
    )
    for result in (by_autograd, by_formula):
        assert result.status is NewtonStatus.CONVERGED
        assert result.steps == 1
        assert result.x == 3.0
        first = result.iterates[0]
        assert (first.f, first.df, first.d2f) == (201.0, -40.0, 4.0)


def test_smooth_convex_function_converges_quadratically():
    # Independent minimiser: f′(x) = expit(x) + x = 0, solved by bisection-type root finding.
    x_star = brentq(lambda x: expit(x) + x, -1.0, 0.0, xtol=1e-17, rtol=1e-15)
    s = expit(x_star)
    third, second = s * (1 - s) * (1 - 2 * s), s * (1 - s) + 1
    rate = abs(third / (2 * second))  # e_{k+1} ≈ C e_k², C = |f‴ / (2 f″)| at x*
    result = newton(softplus_plus_half_square, 3.0)
    assert result.status is NewtonStatus.CONVERGED
    assert result.x == pytest.approx(x_star, abs=1e-15)
    errors = [abs(it.x - x_star) for it in result.iterates]
    pairs = [(e, e_next) for e, e_next in pairwise(errors) if e < 1e-2 and e_next > 1e-13]
    assert pairs, errors
    for e, e_next in pairs:
        assert e_next / e**2 == pytest.approx(rate, rel=0.05)


@pytest.mark.parametrize("x0", [-2.0, -0.5, -1e-9, 0.0])
def test_relu_flat_side_is_zero_curvature_with_non_isolated_minimisers(x0):
    result = diagnose_activation("relu", x0)
    assert result.status is NewtonStatus.ZERO_CURVATURE
    assert result.steps == 0
    it = result.iterates[0]
    assert (it.df, it.d2f) == (0.0, 0.0)
    assert "0/0" in result.message
    assert "non-isolated minimisers" in result.message


@pytest.mark.parametrize("x0", [1e-9, 0.5, 2.0])
def test_relu_active_side_is_zero_curvature_with_undefined_step(x0):
    result = diagnose_activation("relu", x0)
    assert result.status is NewtonStatus.ZERO_CURVATURE
    assert (result.iterates[0].df, result.iterates[0].d2f) == (1.0, 0.0)
    assert "divides by zero" in result.message
    assert "non-isolated minimisers" in result.message


def test_relu_by_autograd_also_reports_zero_curvature():
    result = newton(torch.relu, 1.5)
    assert result.status is NewtonStatus.ZERO_CURVATURE
    assert result.iterates[0].d2f == 0.0


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize(
    ("x0", "mode"), [(-1.0, "minimize"), (-0.3, "minimize"), (1.0, "stationary")]
)
def test_sigmoid_and_tanh_have_no_stationary_point_at_finite_x(name, x0, mode):
    result = diagnose_activation(name, x0, mode=mode)
    assert result.status is NewtonStatus.NO_STATIONARY_POINT
    assert "no stationary point at finite x" in result.message
    assert result.steps < 50
    moves = [b.x - a.x for a, b in pairwise(result.iterates)]
    assert all(m * math.copysign(1, x0) > 0 for m in moves)  # runs off away from 0


def test_sigmoid_iterates_follow_the_hand_derived_recursion():
    # For f = sigmoid, −f′/f″ = −1/(1 − 2σ(x)) (f′ = σ(1−σ), f″ = σ(1−σ)(1−2σ)).
    result = diagnose_activation("sigmoid", -1.0)
    for a, b in pairwise(result.iterates):
        assert b.x == pytest.approx(a.x - 1 / (1 - 2 * expit(a.x)), rel=1e-14)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_sigmoid_and_tanh_go_uphill_where_concave(name):
    result = diagnose_activation(name, 1.0)
    assert result.status is NewtonStatus.NEGATIVE_CURVATURE
    assert result.iterates[0].d2f < 0
    assert "stationary points: none at finite x" in result.message  # the registry note


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_inflection_point_at_zero_is_zero_curvature(name):
    result = diagnose_activation(name, 0.0)
    assert result.status is NewtonStatus.ZERO_CURVATURE
    assert result.iterates[0].df > 0


@pytest.mark.parametrize(("name", "x0"), [("softplus", 2.0), ("elu", -1.0)])
def test_one_sided_saturating_activations_run_off(name, x0):
    assert diagnose_activation(name, x0).status is NewtonStatus.NO_STATIONARY_POINT


@pytest.mark.parametrize(("name", "x0"), [("gelu", -1.0), ("silu", -1.0)])
def test_gelu_and_silu_converge_to_their_minimum(name, x0):
    reference = {"gelu": gelu, "silu": silu}[name]
    result = diagnose_activation(name, x0)
    assert result.status is NewtonStatus.CONVERGED
    x = torch.tensor(result.x, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(reference(x), x)
    assert abs(slope.item()) < 1e-14
    assert result.iterates[-1].d2f > 0


def test_identity_and_leaky_relu_are_zero_curvature():
    for name in ("identity", "leaky_relu"):
        result = diagnose_activation(name, -1.0)
        assert result.status is NewtonStatus.ZERO_CURVATURE
        assert "piecewise linear" in result.message


def test_slow_convergence_on_a_flat_minimum_is_not_mistaken_for_a_run_off():
    result = newton(lambda x: (x - 5.0) ** 20, 0.0, max_iter=500)  # steps shrink by 18/19
    assert result.status is NewtonStatus.CONVERGED
    assert result.x == pytest.approx(5.0, abs=1e-6)


def test_max_iterations_is_reported_and_respected():
    result = newton(lambda x: x**4, 1.0, max_iter=5)  # linear convergence, ratio 2/3
    assert result.status is NewtonStatus.MAX_ITERATIONS
    assert result.steps == 5
    assert result.x == pytest.approx((2 / 3) ** 5, rel=1e-12)


def test_growing_steps_without_a_root_of_f_prime_are_no_stationary_point():
    result = newton(torch.log, 1.0, mode="stationary")  # x ← 2x, f′ = 1/x → 0
    assert result.status is NewtonStatus.NO_STATIONARY_POINT
    assert [it.x for it in result.iterates] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_no_root_and_no_decay_terminates_within_max_iter():
    result = newton(lambda x: x**3 + x, 0.5, mode="stationary", max_iter=30)
    assert result.status is NewtonStatus.MAX_ITERATIONS
    assert result.steps == 30


def test_numerically_zero_curvature_is_diagnosed_before_the_step_overflows():
    result = newton(
        lambda x: x,
        0.0,
        df=lambda x: torch.tensor(1.0, dtype=torch.float64),
        d2f=lambda x: torch.tensor(1e-300, dtype=torch.float64),
    )
    assert result.status is NewtonStatus.ZERO_CURVATURE
    assert "numerically zero" in result.message


@pytest.mark.parametrize(("function", "x0"), [(torch.log, -1.0), (torch.exp, 800.0)])
def test_nan_or_inf_values_are_diagnosed(function, x0):
    result = newton(function, x0)
    assert result.status is NewtonStatus.NON_FINITE
    assert result.steps == 0


def test_local_maximum_with_zero_slope_is_negative_curvature_when_minimising():
    result = newton(lambda x: -(x**2), 0.0)
    assert result.status is NewtonStatus.NEGATIVE_CURVATURE
    stationary = newton(lambda x: -(x**2), 0.0, mode="stationary")
    assert stationary.status is NewtonStatus.CONVERGED


def test_bad_arguments_raise_invalid_argument_error():
    with pytest.raises(InvalidArgumentError, match="x0 must be a finite number"):
        newton(torch.sin, math.nan)
    with pytest.raises(InvalidArgumentError, match="unknown mode 'maximize'"):
        newton(torch.sin, 0.0, mode="maximize")
    with pytest.raises(InvalidArgumentError, match="must return a scalar"):
        newton(lambda x: torch.stack([x, x]), 0.0)
    with pytest.raises(InvalidArgumentError, match="unknown activation"):
        diagnose_activation("nope", 0.0)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_a_function_autograd_cannot_see_through_is_refused():
    with pytest.raises(InvalidArgumentError, match="does not depend on x through torch"):
        newton(lambda x: math.sin(x), 0.0)
