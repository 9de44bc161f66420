"""HessianFree: exact on least squares, damping adaptation, safety, ablations, exact resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from hesskit.errors import InvalidArgumentError, NonFiniteError
from hesskit.losses import MSELoss
from hesskit.models import mlp
from hesskit.operators.base import CurvatureOperator, MatrixOperator
from hesskit.operators.gauss_newton import gauss_newton_operator
from hesskit.optim import (
    CGSettings,
    HessianFree,
    LevenbergMarquardt,
    martens_preconditioner,
)
from hesskit.problem import Problem

DTYPE = torch.float64


def least_squares(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 5, generator=gen, dtype=DTYPE)
    Y = torch.randn(40, 2, generator=gen, dtype=DTYPE)
    torch.manual_seed(seed)
    model = nn.Linear(5, 2).to(DTYPE)
    return model, X, Y


def closure_for(model, optimizer, X, Y, loss_fn=None):
    loss_fn = loss_fn or nn.functional.mse_loss

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(X), Y)
        loss.backward()
        return loss

    return closure


def ggn_of(model, X, Y):
    return lambda: gauss_newton_operator(Problem(model, nn.MSELoss(), (X, Y)))


def lstsq_solution(X, Y):
    design = np.hstack([X.numpy(), np.ones((len(X), 1))])
    coef, *_ = np.linalg.lstsq(design, Y.numpy(), rcond=None)
    return coef[:-1].T, coef[-1]


@pytest.mark.parametrize("preconditioned", [False, True])
def test_one_step_with_tiny_damping_solves_linear_least_squares(preconditioned):
    model, X, Y = least_squares()
    problem = Problem(model, nn.MSELoss(), (X, Y))
    precond = martens_preconditioner(problem) if preconditioned else None
    optimizer = HessianFree(
        model.parameters(),
        curvature=ggn_of(model, X, Y),
        damping=LevenbergMarquardt(initial=1e-12),
        cg=CGSettings(max_iterations=100, rtol=1e-13),
        preconditioner=precond,
    )
    optimizer.step(closure_for(model, optimizer, X, Y))
    weight, bias = lstsq_solution(X, Y)
    np.testing.assert_allclose(model.weight.detach().numpy(), weight, atol=1e-9)
    np.testing.assert_allclose(model.bias.detach().numpy(), bias, atol=1e-9)
    assert optimizer.hf_state["last_step_size"] == 1.0


def test_damping_falls_after_a_very_successful_step():
    model, X, Y = least_squares()
    optimizer = HessianFree(
        model.parameters(), curvature=ggn_of(model, X, Y), damping=LevenbergMarquardt(initial=1.0)
    )
    optimizer.step(closure_for(model, optimizer, X, Y))
    # on a quadratic the undamped model is exact: ρ = 1 > 3/4
    assert optimizer.hf_state["last_ratio"] > 0.75
    assert optimizer.hf_state["damping"] == pytest.approx(2 / 3, rel=1e-15)


def test_damping_rises_after_a_step_the_model_predicted_badly():
    model, X, Y = least_squares()
    too_flat = MatrixOperator(1e-6 * torch.eye(12, dtype=DTYPE))  # far below the true G
    optimizer = HessianFree(
        model.parameters(), curvature=lambda: too_flat, damping=LevenbergMarquardt(initial=1e-3)
    )
    optimizer.step(closure_for(model, optimizer, X, Y))
    assert optimizer.hf_state["last_ratio"] < 0.25
    assert optimizer.hf_state["damping"] == pytest.approx(1.5e-3, rel=1e-15)


def test_negative_curvature_with_an_indefinite_curvature_still_lowers_the_loss():
    A = torch.diag(torch.tensor([2.0, 1.0, -1.0], dtype=DTYPE))
    b = torch.tensor([1.0, -1.0, 0.5], dtype=DTYPE)
    theta = nn.Parameter(torch.zeros(3, dtype=DTYPE))

    def loss_fn():
        return 0.5 * theta @ A @ theta - b @ theta  # unbounded below along e₃

    optimizer = HessianFree(
        [theta], curvature=lambda: MatrixOperator(A), damping=LevenbergMarquardt(initial=1e-3)
    )

    def closure():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    before = float(loss_fn().detach())
    optimizer.step(closure)
    assert optimizer.hf_state["last_cg_status"] == "NEGATIVE_CURVATURE"
    assert float(loss_fn().detach()) < before


def ill_closure(model, optimizer, X, Y, poison):
    """A closure whose first call poisons the loss or the gradient (then behaves)."""
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y)
        loss.backward()
        if len(calls) == 1 and poison == "loss":
            return loss * float("nan")
        if len(calls) == 1 and poison == "gradient":
            model.weight.grad[0, 0] = float("inf")
        return loss

    return closure


class PoisonedOperator(CurvatureOperator):
    def __init__(self, n):
        from hesskit.layout import ParameterLayout

        super().__init__(ParameterLayout(("x",), (torch.Size([n]),)), DTYPE, torch.device("cpu"))

    def _matmat(self, V):
        return torch.full_like(V, float("nan"))


@pytest.mark.parametrize("poison", ["loss", "gradient", "curvature"])
def test_a_non_finite_step_is_rejected_bitwise_and_grows_the_damping(poison):
    model, X, Y = least_squares()
    curvature = (lambda: PoisonedOperator(12)) if poison == "curvature" else ggn_of(model, X, Y)
    optimizer = HessianFree(
        model.parameters(), curvature=curvature, damping=LevenbergMarquardt(initial=2.0)
    )
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step(ill_closure(model, optimizer, X, Y, poison))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert optimizer.hf_state["damping"] == 3.0
    assert optimizer.hf_state["nonfinite_rejections"] == 1
    assert optimizer.hf_state["consecutive_nonfinite"] == 1


def test_ten_consecutive_non_finite_steps_raise_and_an_accepted_step_resets_the_count():
    model, X, Y = least_squares()
    optimizer = HessianFree(model.parameters(), curvature=ggn_of(model, X, Y))
    for _ in range(9):
        optimizer.step(ill_closure(model, optimizer, X, Y, "loss"))
    optimizer.step(closure_for(model, optimizer, X, Y))
    assert optimizer.hf_state["consecutive_nonfinite"] == 0
    assert optimizer.hf_state["nonfinite_rejections"] == 9
    for _ in range(9):
        optimizer.step(ill_closure(model, optimizer, X, Y, "loss"))
    with pytest.raises(NonFiniteError, match=r"10 steps in a row .* the loss or its gradient"):
        optimizer.step(ill_closure(model, optimizer, X, Y, "loss"))


def autoencoder(seed=0):
    torch.manual_seed(seed)
    model = mlp([6, 4, 2, 4, 6]).to(DTYPE)
    data = torch.randn(64, 6, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
    return model, data


def train_autoencoder(model, optimizer, data, steps, first_step=0):
    """Gradient batch of 32 and curvature batch of 8 chosen by the step number."""
    loss_fn = MSELoss(reduction="sample_mean")
    for step in range(first_step, first_step + steps):
        rows = torch.arange(32) + 32 * (step % 2)
        batch = data[rows]

        def closure(batch=batch):
            optimizer.zero_grad()
            loss = loss_fn(model(batch), batch)
            loss.backward()
            return loss

        optimizer.curvature = ggn_of_batch(model, batch[:8], loss_fn)
        optimizer.step(closure)


def ggn_of_batch(model, batch, loss_fn):
    return lambda: gauss_newton_operator(Problem(model, loss_fn, (batch, batch)))


def make_hf(model, data, **options):
    loss_fn = MSELoss(reduction="sample_mean")
    options.setdefault("cg", CGSettings(max_iterations=30))
    return HessianFree(
        model.parameters(),
        curvature=ggn_of_batch(model, data[:8], loss_fn),
        preconditioner=martens_preconditioner(Problem(model, loss_fn, (data[:32], data[:32]))),
        **options,
    )


def test_state_dict_round_trip_resumes_bit_identically():
    model, data = autoencoder()
    optimizer = make_hf(model, data)
    train_autoencoder(model, optimizer, data, steps=3)
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    assert saved_optimizer["hessian_free"]["warm_start"] is not None
    train_autoencoder(model, optimizer, data, steps=3, first_step=3)

    resumed, _ = autoencoder(seed=5)  # different initial values, overwritten by the load
    resumed.load_state_dict(saved_model)
    fresh = make_hf(resumed, data)
    fresh.load_state_dict(saved_optimizer)
    train_autoencoder(resumed, fresh, data, steps=3, first_step=3)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    assert fresh.hf_state["damping"] == optimizer.hf_state["damping"]
    assert fresh.hf_state["steps"] == 6


def test_loading_a_foreign_state_dict_says_what_to_do():
    model, data = autoencoder()
    optimizer = make_hf(model, data)
    sgd_state = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    with pytest.raises(InvalidArgumentError, match="no 'hessian_free' entry"):
        optimizer.load_state_dict(sgd_state)


def test_hessian_free_with_a_small_curvature_batch_beats_gradient_descent():
    model, data = autoencoder()
    twin = copy.deepcopy(model)
    loss_fn = MSELoss(reduction="sample_mean")
    with torch.no_grad():
        start = float(loss_fn(model(data), data))
    # λ₀ = 1 (not Martens' 45, tuned for his autoencoders): 10 steps are too few to adapt
    train_autoencoder(
        model, make_hf(model, data, damping=LevenbergMarquardt(initial=1.0)), data, steps=10
    )
    sgd = torch.optim.SGD(twin.parameters(), lr=0.05)
    train_autoencoder(twin, sgd, data, steps=10)
    with torch.no_grad():
        hf_loss, sgd_loss = float(loss_fn(model(data), data)), float(loss_fn(twin(data), data))
    assert hf_loss < 0.8 * start
    assert hf_loss < sgd_loss


def test_warm_start_costs_one_product_and_decay_zero_switches_it_off():
    """Products beyond CG's iterations: ρ's undamped model pᵀBp (one a step) and the
    warm start's initial residual (one a step after the first)."""
    for decay, extra in [(0.95, 1), (0.0, 0)]:
        model, data = autoencoder()
        optimizer = make_hf(model, data, cg=CGSettings(max_iterations=30, warm_start_decay=decay))
        train_autoencoder(model, optimizer, data, steps=1)
        first = optimizer.hf_state["curvature_products"] - optimizer.hf_state["cg_iterations"]
        train_autoencoder(model, optimizer, data, steps=1, first_step=1)
        total_extra = optimizer.hf_state["curvature_products"] - optimizer.hf_state["cg_iterations"]
        assert (first, total_extra) == (1, 2 + extra)


def test_ablations_run_and_fixed_damping_stays_fixed():
    model, data = autoencoder()
    optimizer = make_hf(
        model,
        data,
        damping=LevenbergMarquardt(initial=0.5, adapt=False),
        backtracking=False,
        line_search=None,
    )
    optimizer.preconditioner = None
    train_autoencoder(model, optimizer, data, steps=3)
    assert optimizer.hf_state["damping"] == 0.5
    assert optimizer.hf_state["accepted_steps"] + optimizer.hf_state["failed_line_searches"] == 3


def test_a_curvature_of_the_wrong_size_is_refused():
    model, X, Y = least_squares()
    optimizer = HessianFree(
        model.parameters(), curvature=lambda: MatrixOperator(torch.eye(3, dtype=DTYPE))
    )
    with pytest.raises(InvalidArgumentError, match=r"is 3×3 but the optimizer has 12 parameters"):
        optimizer.step(closure_for(model, optimizer, X, Y))


def hf_run(use_loss_closure: bool, steps: int = 4):
    """HF on the small autoencoder, one fixed batch; returns the model and the calls of
    the gradient closure and the loss closure (and how many of those had grad enabled)."""
    loss_fn = MSELoss(reduction="sample_mean")
    model, data = autoencoder()
    optimizer = make_hf(model, data)
    batch = data[:32]
    calls = {"gradient": 0, "loss": 0, "loss with grad enabled": 0}

    def closure():
        calls["gradient"] += 1
        optimizer.zero_grad()
        loss = loss_fn(model(batch), batch)
        loss.backward()
        return loss

    def loss_closure():
        calls["loss"] += 1
        calls["loss with grad enabled"] += torch.is_grad_enabled()
        return loss_fn(model(batch), batch)

    for _ in range(steps):
        optimizer.step(closure, loss_closure=loss_closure if use_loss_closure else None)
    return model, calls


def test_a_loss_closure_takes_every_trial_point_and_leaves_the_steps_unchanged():
    """With ``loss_closure`` the gradient closure runs once a step and every trial point is
    a loss-only evaluation without grad; the iterates are those of the closure-only run."""
    plain, plain_calls = hf_run(use_loss_closure=False)
    lean, lean_calls = hf_run(use_loss_closure=True)
    for a, b in zip(plain.parameters(), lean.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert lean_calls["gradient"] == 4 and lean_calls["loss with grad enabled"] == 0
    # the closure-only run makes the same trial evaluations through the gradient closure
    assert plain_calls["gradient"] == 4 + lean_calls["loss"] and lean_calls["loss"] >= 4
