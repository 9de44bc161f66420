"""K-FAC's λ is the shared Levenberg-Marquardt rule object with K-FAC's constants
(Martens & Grosse 2015, §6.5) and stays within its floor and ceiling (issue 22)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from closures import batch_closure
from hesskit.operators.kfac_factors import FactorTargets
from hesskit.optim.damping import LevenbergMarquardt, levenberg_marquardt_update
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACSchedule


def test_the_rule_is_levenberg_marquardt_with_increase_one_over_omega1_and_decrease_omega1():
    schedule = KFACSchedule()
    rule = schedule.damping_rule
    assert isinstance(rule, LevenbergMarquardt)
    omega1 = (19 / 20) ** 5  # ω₁ = (19/20)^T₁, T₁ = 5 (§6.5)
    assert rule.increase == pytest.approx(1 / omega1, rel=1e-15)
    assert rule.decrease == pytest.approx(omega1, rel=1e-15)
    assert (rule.lower, rule.upper, rule.initial) == (0.25, 0.75, 150.0)
    assert (rule.floor, rule.ceiling) == (1e-6, 1e10)
    for ratio in (-math.inf, 0.1, 0.5, 0.9, math.nan):
        assert rule.updated(ratio, 3.0) == levenberg_marquardt_update(
            ratio, 3.0, rule)
    assert rule.updated(math.nan, 3.0) == 3.0  # no information: λ kept
    assert rule.updated(0.9, 1.1e-6) == 1e-6  # a decrease stops at the floor
    assert rule.updated(0.1, 0.9e10) == 1e10  # an increase at the ceiling
    with pytest.raises(Exception, match="ceiling"):
        KFACSchedule(initial_damping=1e11)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))  # float32


def test_a_run_with_nan_losses_on_9_of_10_steps_is_the_clean_run_and_trains_after():
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(64, 6, generator=gen), torch.randint(0, 3, (64,), generator=gen)

    def poisoned() -> torch.Tensor:  # a closure whose loss is NaN (a bad batch)
        return torch.tensor(float("nan"))

    model, clean_model = mlp(), mlp()
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(), max_rejections=10**6,
               schedule=KFACSchedule(statistics_fraction=1.0))
    clean = KFAC(clean_model.parameters(), model=clean_model, loss=nn.CrossEntropyLoss(),
                 schedule=KFACSchedule(statistics_fraction=1.0))
    opt_closure = batch_closure(opt, X, Y)
    clean_closure = batch_closure(clean, X, Y)
    rule = opt.schedule.damping_rule
    for k in range(400):
        opt.step(opt_closure if k % 10 == 9 else poisoned)
        assert rule.floor <= opt.kfac_state["damping"] <= rule.ceiling
    for _ in range(40):
        clean.step(clean_closure)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(),
                                                  clean_model.parameters(), strict=True))
    assert opt.kfac_state["damping"] == clean.kfac_state["damping"]
    losses = [float(opt.step(opt_closure)) for _ in range(20)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert rule.floor <= opt.kfac_state["damping"] <= rule.ceiling


def test_failed_steps_raise_lambda_to_the_ceiling_and_no_higher():
    model = mlp()
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(), max_rejections=10**6)
    loss = torch.tensor(1.0)
    for _ in range(200):  # 150 · 1.29^200 ≈ 1e24 unbounded
        opt._reject("the loss after the step", loss)
        assert opt.kfac_state["damping"] <= opt.schedule.damping_rule.ceiling
    assert opt.kfac_state["damping"] == opt.schedule.damping_rule.ceiling


def test_on_a_clean_problem_lambda_falls_to_the_floor_and_no_lower():
    # Exact K-FAC on linear regression: the first step is Newton's (ρ = 1 > 3/4), so λ
    # would fall to ω₁λ₀ = 0.95 · 1.02e-6 < floor; later ρ carries no information (the
    # predicted decrease is below the loss's rounding) and λ is kept.
    torch.manual_seed(3)
    model = nn.Linear(4, 2).double()
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(32, 4, generator=gen, dtype=torch.float64)
    Y = X @ torch.randn(4, 2, generator=gen, dtype=torch.float64)
    schedule = KFACSchedule(statistics_fraction=1.0, initial_damping=1.02e-6,
                            damping_interval=1)
    opt = KFAC(model.parameters(), model=model, loss=nn.MSELoss(), targets=FactorTargets.EXPECTED,
               schedule=schedule)
    opt_closure = batch_closure(opt, X, Y)
    opt.step(opt_closure)
    assert opt.kfac_state["last_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert opt.kfac_state["damping"] == schedule.damping_rule.floor
    for _ in range(2):
        opt.step(opt_closure)
        assert opt.kfac_state["damping"] == schedule.damping_rule.floor
