"""Sophia: the estimators against the exact diagonals within their standard error, the
first step by hand, convergence, the constants, resume and rejection."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.optim.diagonal import sophia
from hesskit.optim.diagonal.sophia import (
    Sophia,
    SophiaEstimator,
    gauss_newton_bartlett_diagonal,
    hutchinson_gaussian_diagonal,
)
from hesskit.problem import Problem

DTYPE = torch.float64


def mlp_problem(loss: nn.Module, classes: bool = True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DTYPE)
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(16, 3, generator=gen, dtype=DTYPE)
    Y = torch.randint(0, 3, (16,), generator=gen) if classes else torch.randn(
        16, 3, generator=gen, dtype=DTYPE)
    return model, X, Y, Problem(model, loss, (X, Y))


def assert_within_standard_error(draws: torch.Tensor, exact: torch.Tensor) -> None:
    mean = draws.mean(0)
    stderr = draws.std(0) / math.sqrt(draws.shape[0])
    # 5 standard errors per entry over ~40 entries: a false alarm has probability ~1e-5
    assert bool(((mean - exact).abs() <= 5 * stderr + 1e-12).all())


@pytest.mark.parametrize("loss", [nn.CrossEntropyLoss(), nn.MSELoss()], ids=["ce", "mse"])
def test_gauss_newton_bartlett_converges_to_the_ggn_diagonal(loss):
    _, _, _, problem = mlp_problem(loss, classes=isinstance(loss, nn.CrossEntropyLoss))
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([gauss_newton_bartlett_diagonal(problem, gen) for _ in range(400)])
    assert_within_standard_error(draws, gauss_newton_operator(problem).diagonal())


def test_hutchinson_converges_to_the_hessian_diagonal():
    _, _, _, problem = mlp_problem(nn.CrossEntropyLoss())
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([hutchinson_gaussian_diagonal(problem, gen) for _ in range(400)])
    assert_within_standard_error(draws, hessian_operator(problem).diagonal())


def test_constants_are_the_authors():
    assert sophia.LR == 1e-4 and sophia.BETAS == (0.965, 0.99) and sophia.RHO == 0.04
    assert sophia.EPS == 1e-15 and sophia.WEIGHT_DECAY == 0.2 and sophia.INTERVAL == 10


def closure_for(opt, model, X, Y, loss):
    def closure():
        opt.zero_grad()
        value = loss(model(X), Y)
        value.backward()
        return value
    return closure


def test_first_step_matches_a_hand_computation():
    loss = nn.CrossEntropyLoss()
    model, X, Y, problem = mlp_problem(loss)
    start = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(loss(model(X), Y), list(model.parameters()))
    h_hat = problem.layout.unflatten(
        gauss_newton_bartlett_diagonal(problem, torch.Generator().manual_seed(5)))
    opt = Sophia(model.parameters(), curvature=lambda: Problem(model, loss, (X, Y)),
                 lr=0.01, seed=5)
    opt.step(closure_for(opt, model, X, Y, loss))
    for (name, p), p0, g in zip(model.named_parameters(), start, grads, strict=True):
        m, h = 0.035 * g, 0.01 * h_hat[name]
        expected = p0 * (1 - 0.01 * 0.2) - 0.01 * (m / (0.04 * h).clamp(min=1e-15)).clamp(-1, 1)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("estimator", list(SophiaEstimator))
def test_converges_on_linear_regression(estimator):
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = nn.Linear(3, 2).to(DTYPE)
    X, Y = torch.randn(30, 3, generator=gen, dtype=DTYPE), torch.randn(30, 2, generator=gen,
                                                                      dtype=DTYPE)
    Xb = torch.cat([X, torch.ones(30, 1, dtype=DTYPE)], 1)
    best = float(nn.functional.mse_loss(Xb @ torch.linalg.lstsq(Xb, Y).solution, Y))
    loss = nn.MSELoss()
    opt = Sophia(model.parameters(), curvature=lambda: Problem(model, loss, (X, Y)),
                 estimator=estimator, lr=0.02, weight_decay=0.0, rho=1.0)
    closure = closure_for(opt, model, X, Y, loss)
    for _ in range(400):
        opt.step(closure)
    assert float(loss(model(X), Y).detach()) - best < 1e-3


def test_state_dict_round_trip_resumes_bit_identically():
    loss = nn.CrossEntropyLoss()
    model, X, Y, _ = mlp_problem(loss)
    opt = Sophia(model.parameters(), curvature=lambda: Problem(model, loss, (X, Y)),
                 lr=0.01, interval=2, seed=1)
    for _ in range(3):
        opt.step(closure_for(opt, model, X, Y, loss))
    twin = copy.deepcopy(model)
    twin_opt = Sophia(twin.parameters(), curvature=lambda: Problem(twin, loss, (X, Y)),
                      lr=0.01, interval=2, seed=9)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(4):
        opt.step(closure_for(opt, model, X, Y, loss))
        twin_opt.step(closure_for(twin_opt, twin, X, Y, loss))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(),
                                                 strict=True))


def test_non_finite_loss_is_rejected_leaving_parameters_unchanged():
    loss = nn.CrossEntropyLoss()
    model, X, Y, _ = mlp_problem(loss)
    opt = Sophia(model.parameters(), curvature=lambda: Problem(model, loss, (X, Y)))
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda: torch.tensor(float("nan"), dtype=DTYPE))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.sophia_state["nonfinite_rejections"] == 1 and opt.sophia_state["steps"] == 0


def _run_with_a_rejected_step(reject: bool) -> list[torch.Tensor]:
    """Five steps of Sophia-G with rho = 100 (estimate every step, few entries clipped, so
    the step depends on the estimate); with ``reject`` an extra step with an
    infinite learning rate (finite loss, gradient and estimate; the step, checked after the
    estimate drew its probe, is not finite) comes before the third."""
    loss = nn.MSELoss()
    model, X, _, _ = mlp_problem(loss, classes=False)
    Y = torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    opt = Sophia(model.parameters(), curvature=lambda: Problem(model, loss, (X, Y)),
                 lr=0.01, rho=100.0, interval=1, seed=4)
    for i in range(5):
        if i == 2 and reject:
            before = [p.detach().clone() for p in model.parameters()]
            opt.param_groups[0]["lr"] = math.inf
            opt.step(closure_for(opt, model, X, Y, loss))
            opt.param_groups[0]["lr"] = 0.01
            assert opt.sophia_state["nonfinite_rejections"] == 1
            assert all(torch.equal(a, b) for a, b in
                       zip(before, model.parameters(), strict=True))
        opt.step(closure_for(opt, model, X, Y, loss))
    return [p.detach().clone() for p in model.parameters()]


def test_a_rejected_step_leaves_the_run_bitwise_equal_to_the_run_without_it():
    clean = _run_with_a_rejected_step(False)
    rejected = _run_with_a_rejected_step(True)
    assert all(torch.equal(a, b) for a, b in zip(clean, rejected, strict=True))
