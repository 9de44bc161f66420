"""Every constant of K-FAC's schedule pinned, by value and by behaviour (issue 22: the ρ
thresholds 1/4 and 3/4 survived a mutation to 0.3 / 0.7).

Martens & Grosse (2015), "Optimizing Neural Networks with Kronecker-factored Approximate
Curvature", ICML, arXiv:1503.05671. §6.5: "if ρ > 3/4 then λ ← ω₁λ, if ρ < 1/4 then
λ ← λ/ω₁", applied every T₁ = 5 iterations with ω₁ = (19/20)^T₁; §6.6: γ re-chosen every
T₂ = 20 iterations among {γ, ω₂γ, γ/ω₂}, ω₂ = (√(19/20))^T₂; §8: the inverses refreshed
on the first 3 iterations and every T₃ = 20; §5: ε = min(1 − 1/k, 0.95); §13: λ₀ = 150,
τ₁ = 1/8. The floor 1e-6 and ceiling 1e10 of λ are hesskit's
(:class:`~hesskit.optim.damping.LevenbergMarquardt`).

Each test names the constant it pins; a change to any of them fails at least one test here
(checked by mutating ``kfac_steps.py`` and ``damping.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from closures import batch_closure
from hesskit.optim.damping import LevenbergMarquardt
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACSchedule

LOWER, UPPER = 1 / 4, 3 / 4  # ρ thresholds (§6.5)
OMEGA1 = (19 / 20) ** 5  # ω₁ = (19/20)^T₁, T₁ = 5 (§6.5)
LAMBDA = 2.0  # a λ well inside [floor, ceiling]


def kfac(model: nn.Module, **schedule) -> KFAC:
    """K-FAC on ``model`` with a cross-entropy loss (statistics on the whole batch)."""
    return KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(),
                schedule=KFACSchedule(statistics_fraction=1.0, **schedule) if schedule
                else KFACSchedule(statistics_fraction=1.0))


def kfac_step(opt: KFAC, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One K-FAC step on a batch, through the ordinary closure."""
    return opt.step(batch_closure(opt, inputs, targets))


# -- the ρ thresholds ----------------------------------------------------------------------


def test_the_rho_thresholds_are_one_quarter_and_three_quarters():
    # Martens & Grosse (2015) §6.5: λ ← ω₁λ if ρ > 3/4, λ ← λ/ω₁ if ρ < 1/4.
    rule = KFACSchedule().damping_rule
    assert rule.lower == 0.25 and rule.upper == 0.75


@pytest.mark.parametrize(
    ("ratio", "change"),
    [
        (-math.inf, "up"),
        (0.0, "up"),
        (LOWER - 1e-6, "up"),  # just below 1/4: λ grows
        (LOWER, "kept"),  # the rule is strict: ρ = 1/4 keeps λ
        (LOWER + 1e-6, "kept"),  # just above 1/4 (a threshold raised to 0.3 fails here)
        (0.29, "kept"),
        (0.5, "kept"),
        (0.71, "kept"),
        (UPPER - 1e-6, "kept"),  # just below 3/4 (a threshold lowered to 0.7 fails here)
        (UPPER, "kept"),  # strict: ρ = 3/4 keeps λ
        (UPPER + 1e-6, "down"),  # just above 3/4: λ shrinks
        (1.0, "down"),
        (5.0, "down"),
        (math.nan, "kept"),  # no information (hesskit: nan_raises=False for K-FAC)
    ],
)
def test_rho_below_a_quarter_raises_lambda_above_three_quarters_lowers_it_between_keeps(
    ratio, change
):
    rule = KFACSchedule().damping_rule
    want = {"up": LAMBDA / OMEGA1, "down": LAMBDA * OMEGA1, "kept": LAMBDA}[change]
    got = rule.updated(ratio, LAMBDA)
    assert got == pytest.approx(want, rel=1e-14)


# -- ω₁, ω₂ and λ₀ -------------------------------------------------------------------------


def test_omega1_is_nineteen_twentieths_to_the_t1_and_scales_lambda_both_ways():
    schedule = KFACSchedule()
    assert schedule.omega1 == pytest.approx(0.7737809375, rel=1e-12)  # (19/20)⁵
    for interval in (1, 2, 7):
        assert KFACSchedule(damping_interval=interval).omega1 == pytest.approx(
            (19 / 20) ** interval, rel=1e-14)
    rule = schedule.damping_rule
    assert rule.increase == pytest.approx(1 / 0.7737809375, rel=1e-12)
    assert rule.decrease == pytest.approx(0.7737809375, rel=1e-12)
    # one poor and one good ρ undo each other exactly (increase = 1/decrease)
    assert rule.updated(0.9, rule.updated(0.1, LAMBDA)) == pytest.approx(LAMBDA, rel=1e-14)


def test_omega2_is_the_root_of_nineteen_twentieths_to_the_t2():
    assert KFACSchedule().omega2 == pytest.approx(0.95**10, rel=1e-12)  # (√0.95)²⁰
    assert KFACSchedule(gamma_interval=4).omega2 == pytest.approx(0.95**2, rel=1e-12)


def test_the_initial_damping_is_150_and_gamma_starts_at_its_root():
    schedule = KFACSchedule()
    assert schedule.initial_damping == 150.0  # §13
    assert schedule.damping_rule.initial == 150.0
    opt = kfac(nn.Linear(2, 2))
    assert opt.kfac_state["damping"] == 150.0
    assert opt.kfac_state["gamma"] == pytest.approx(math.sqrt(150.0), rel=1e-15)  # §6.6


def test_the_damping_floor_and_ceiling():
    schedule = KFACSchedule()
    assert (schedule.damping_floor, schedule.damping_ceiling) == (1e-6, 1e10)
    assert (LevenbergMarquardt.floor, LevenbergMarquardt.ceiling) == (1e-6, 1e10)
    rule = schedule.damping_rule
    assert (rule.floor, rule.ceiling) == (1e-6, 1e10)
    assert rule.updated(0.9, 1.1e-6) == 1e-6
    assert rule.updated(-math.inf, 9e9) == 1e10


def test_nan_rho_keeps_lambda_for_kfac_but_raises_it_for_hessian_free():
    assert KFACSchedule().damping_rule.nan_raises is False
    assert LevenbergMarquardt().nan_raises is True  # Martens 2010's code, line 1392


# -- the intervals, the averaging and τ₁ ---------------------------------------------------


def test_the_intervals():
    schedule = KFACSchedule()
    assert schedule.damping_interval == 5  # T₁ (§6.5)
    assert schedule.gamma_interval == 20  # T₂ (§6.6)
    assert schedule.inverse_interval == 20  # T₃ (§8)
    assert schedule.initial_inverse_steps == 3  # §8


def test_the_inverses_are_refreshed_on_the_first_three_iterations_and_every_twentieth():
    schedule = KFACSchedule()
    refreshed = [k for k in range(1, 62) if schedule.refresh_inverses(k)]
    assert refreshed == [1, 2, 3, 20, 40, 60]


def test_the_factor_averaging_weight_is_one_minus_one_over_k_capped_at_0_95():
    schedule = KFACSchedule()
    assert schedule.max_decay == 0.95  # §5
    assert [schedule.decay(k) for k in (1, 2, 4, 19, 20, 21, 1000)] == [
        0.0, 0.5, 0.75, 1 - 1 / 19, 0.95, 0.95, 0.95]


def test_the_statistics_use_the_first_eighth_of_the_batch():
    assert KFACSchedule().statistics_fraction == 1 / 8  # τ₁ (§13)


# -- the constants in the optimizer's iteration --------------------------------------------


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    gen = torch.Generator().manual_seed(0)
    return model, torch.randn(48, 4, generator=gen), torch.randint(0, 3, (48,), generator=gen)


def test_lambda_moves_only_every_fifth_iteration_by_omega1_on_the_rule_of_rho():
    model, X, Y = _problem()
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss())  # every default
    seen = []
    for _ in range(10):
        kfac_step(opt, X, Y)
        seen.append((opt.kfac_state["damping"], opt.kfac_state["last_ratio"]))
    for k, (damping, ratio) in enumerate(seen, start=1):
        if k < 5:
            assert damping == 150.0 and math.isnan(ratio)  # no ρ before T₁ = 5
    lam = 150.0
    for k in (5, 10):
        damping, ratio = seen[k - 1]
        assert math.isfinite(ratio) or ratio == -math.inf
        want = lam / OMEGA1 if ratio < LOWER else lam * OMEGA1 if ratio > UPPER else lam
        assert damping == pytest.approx(want, rel=1e-12)
        assert seen[k - 2][0] == lam  # unchanged on the iteration before
        lam = damping
    assert seen[5][0] == seen[8][0] == seen[4][0]  # kept between T₁ iterations


def test_gamma_is_rechosen_only_every_twentieth_iteration_among_omega2_multiples():
    model, X, Y = _problem()
    opt = kfac(model)
    gamma0 = opt.kfac_state["gamma"]
    gammas = []
    for _ in range(20):
        kfac_step(opt, X, Y)
        gammas.append(opt.kfac_state["gamma"])
    assert gammas[:19] == [gamma0] * 19
    omega2 = 0.95**10
    assert any(gammas[19] == pytest.approx(g, rel=1e-12)
               for g in (gamma0, omega2 * gamma0, gamma0 / omega2))


def test_the_statistics_batch_is_an_eighth_of_the_step_batch(monkeypatch):
    import hesskit.optim.kfac.optimizer as kfac_module

    sizes = []
    real = kfac_module.factor_statistics

    def spy(problem, *args, **kwargs):
        sizes.append(problem.local_num_data)
        return real(problem, *args, **kwargs)

    monkeypatch.setattr(kfac_module, "factor_statistics", spy)
    model, X, Y = _problem()
    kfac_step(KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss()), X, Y)
    assert sizes == [6]  # ⌈48/8⌉
