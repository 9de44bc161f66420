"""The small pieces the optimizers compose: ρ, the LM rule, backtracking, Armijo, safety."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hesskit.errors import InvalidArgumentError, NonFiniteError
from hesskit.optim import (
    ArmijoSearch,
    DiagonalPreconditioner,
    LevenbergMarquardt,
    armijo_line_search,
    choose_iterate,
    levenberg_marquardt_update,
    reduction_ratio,
)
from hesskit.optim.damping import loss_resolution
from hesskit.optim.safety import (
    init_rejection_state,
    move_parameters,
    record_acceptance,
    record_rejection,
    restore_parameters,
    save_parameters,
)


def test_reduction_ratio_is_actual_over_predicted_and_minus_infinity_when_meaningless():
    assert reduction_ratio(-0.3, -0.4) == pytest.approx(0.75)
    assert reduction_ratio(0.1, -1.0) == -math.inf  # the objective rose (HFDemo line 1351)
    assert reduction_ratio(-1.0, 0.0) == -math.inf  # the model predicted no decrease
    assert reduction_ratio(math.inf, -1.0) == -math.inf
    assert reduction_ratio(-1.0, math.nan) == -math.inf


@pytest.mark.parametrize(
    ("ratio", "factor"),
    [(-5.0, 1.5), (0.0, 1.5), (0.2499, 1.5), (0.25, 1.0), (0.5, 1.0), (0.75, 1.0),
     (0.7501, 2 / 3), (3.0, 2 / 3), (math.nan, 1.5), (-math.inf, 1.5)],
)
def test_levenberg_marquardt_thresholds_and_factors_are_martens(ratio, factor):
    assert levenberg_marquardt_update(ratio, 2.0) == pytest.approx(2.0 * factor, rel=1e-15)


def test_levenberg_marquardt_grows_from_zero_to_the_floor_and_is_fixed_when_not_adapting():
    rule = LevenbergMarquardt(initial=0.0, floor=1e-3)
    assert levenberg_marquardt_update(0.0, 0.0, rule) == 1e-3
    assert levenberg_marquardt_update(-1.0, 7.0, LevenbergMarquardt(adapt=False)) == 7.0


def test_invalid_damping_rules_are_refused():
    with pytest.raises(InvalidArgumentError, match="increase > 1"):
        LevenbergMarquardt(increase=0.5)
    with pytest.raises(InvalidArgumentError, match="finite and ≥ 0"):
        LevenbergMarquardt(initial=-1.0)


def test_choose_iterate_walks_back_while_the_objective_improves():
    calls = []

    def objective(x):
        calls.append(x)
        return (x - 2.2) ** 2

    index, value, evaluations = choose_iterate([1.0, 2.0, 3.0, 4.0, 5.0], objective)
    assert index == 1 and value == pytest.approx(0.04)
    assert calls == [5.0, 4.0, 3.0, 2.0, 1.0] and evaluations == 5
    # the last iterate best: one evaluation, plus one to see the previous is worse
    assert choose_iterate([1.0, 2.0, 3.0], lambda x: -x)[::2] == (2, 2)


def test_choose_iterate_treats_non_finite_values_as_worst():
    index, value, _ = choose_iterate([1.0, 2.0, 3.0], lambda x: math.nan if x > 2 else -x)
    assert (index, value) == (1, -2.0)


def test_armijo_accepts_the_first_step_satisfying_sufficient_decrease():
    # φ(t) = (t - 0.3)², φ(0) = 0.09, φ'(0) = -0.6: t = 1, 0.8, 0.64 fail, 0.512 passes
    # since 0.0449 ≤ 0.09 - 0.01·0.512·0.6; by hand.
    result = armijo_line_search(lambda t: (t - 0.3) ** 2, 0.09, -0.6)
    assert result.step_size == pytest.approx(0.8**3) and result.evaluations == 4
    assert result.value == pytest.approx((0.8**3 - 0.3) ** 2)


def test_armijo_uses_the_known_value_at_one_and_gives_up_with_step_zero():
    result = armijo_line_search(lambda t: 1.0, 0.5, -1.0, value_at_one=0.0)
    assert result.step_size == 1.0 and result.evaluations == 0
    failed = armijo_line_search(lambda t: math.nan, 0.5, -1.0, settings=ArmijoSearch(max_tries=5))
    assert failed.step_size == 0.0 and failed.evaluations == 5 and not failed.success
    assert failed.value == 0.5


def test_armijo_needs_a_plain_decrease_along_an_ascent_direction():
    settings = ArmijoSearch(max_tries=3)
    result = armijo_line_search(lambda t: 1.0 + 0.1 * t, 1.0, 0.1, settings=settings)
    assert result.step_size == 0.0


def test_martens_preconditioner_is_damped_statistic_to_three_quarters():
    d = torch.tensor([0.0, 1.0, 15.0], dtype=torch.float64)
    pre = DiagonalPreconditioner(lambda: d)
    expected = torch.tensor([1.0, 2**0.75, 8.0], dtype=torch.float64)  # (d + 1)^0.75
    torch.testing.assert_close(pre.diagonal(1.0), expected)
    r = torch.tensor([1.0, 1.0, 8.0], dtype=torch.float64)
    torch.testing.assert_close(pre.inverse(1.0)(r), r / expected)
    with pytest.raises(InvalidArgumentError, match="exponent must lie in"):
        DiagonalPreconditioner(lambda: d, exponent=2.0)


def test_restore_after_moving_is_bit_identical():
    params = [torch.randn(3, 2), torch.randn(4)]
    saved = save_parameters(params)
    direction = torch.randn(10) * 1e3
    move_parameters(params, saved, direction, 0.37)
    torch.testing.assert_close(params[1], saved[1] + 0.37 * direction[6:])
    restore_parameters(params, saved)
    assert all(torch.equal(p, s) for p, s in zip(params, saved, strict=True))


def test_rejection_counter_raises_on_the_limit_and_resets_on_acceptance():
    state = {}
    init_rejection_state(state)
    record_rejection(state, "the loss", max_rejections=3)
    record_acceptance(state)
    record_rejection(state, "the loss", max_rejections=3)
    record_rejection(state, "the loss", max_rejections=3)
    assert state == {"nonfinite_rejections": 3, "consecutive_nonfinite": 2}
    with pytest.raises(NonFiniteError, match=r"3 steps in a row .* the loss was NaN or infinite"):
        record_rejection(state, "the loss", max_rejections=3)


def test_a_predicted_decrease_within_rounding_gives_no_information_and_keeps_the_damping():
    # In float32 near a minimum, L(θ + p) = L(θ) to the last bit while q(p) = −1e-9: ρ = 0
    # would grow λ forever. Within the loss's resolution ρ is NaN and λ stays.
    resolution = loss_resolution(2.7, 2.7, dtype_eps=float(np.finfo(np.float32).eps))
    assert resolution == pytest.approx(16 * 2.7 * 2.0**-23)
    ratio = reduction_ratio(0.0, -1e-9, resolution)
    assert math.isnan(ratio)
    # Martens' rule raises λ on NaN (HFDemo nnet_train_2.m line 1392); nan_raises=False keeps it
    assert levenberg_marquardt_update(ratio, 3.0) == pytest.approx(4.5)
    assert levenberg_marquardt_update(ratio, 3.0, LevenbergMarquardt(nan_raises=False)) == 3.0
    # Above the resolution the ratio is the ordinary one, and a failure still grows λ.
    assert reduction_ratio(0.0, -1e-3, resolution) == 0.0
    assert levenberg_marquardt_update(0.0, 3.0) == pytest.approx(4.5)
    assert reduction_ratio(math.nan, -1e-9, resolution) == -math.inf


def test_the_damping_stops_at_its_ceiling_so_float32_products_stay_finite():
    # A NaN ρ at every step (float32 at a minimum) raised λ by 3/2 without bound: past 3.4e38
    # λ·v overflowed float32. The ceiling (1e10 by default) stops the growth there.
    rule = LevenbergMarquardt()
    assert rule.ceiling == 1e10
    damping = 0.1
    for _ in range(300):
        damping = levenberg_marquardt_update(math.nan, damping, rule)
    assert damping == 1e10
    v = torch.ones(3, dtype=torch.float32)
    assert torch.isfinite(v + damping * v).all()
    assert levenberg_marquardt_update(0.0, 2.0, LevenbergMarquardt(initial=1.0, ceiling=2.5)) == 2.5
    # a λ already above the ceiling (set by hand, loaded) is kept, not cut to it
    assert levenberg_marquardt_update(0.0, 5.0, LevenbergMarquardt(initial=1.0, ceiling=2.5)) == 5.0
    assert levenberg_marquardt_update(1.0, 1e10, rule) == pytest.approx(1e10 * 2 / 3)
    with pytest.raises(InvalidArgumentError, match="ceiling"):
        LevenbergMarquardt(initial=45.0, ceiling=10.0)
