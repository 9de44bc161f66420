"""The torch.optim contract of HessianFree and DampedNewton: groups, weight decay, lr and
schedulers, add_param_group, the closure, the return value, state_dict and exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian

import hesskit.optim.hessian_free.solve as hessian_free_module
from hesskit.errors import InvalidArgumentError
from hesskit.losses import MSELoss
from hesskit.models import mlp
from hesskit.operators.gauss_newton import gauss_newton_operator
from hesskit.optim import (
    CGSettings,
    DampedNewton,
    DiagonalPreconditioner,
    HessianFree,
    LevenbergMarquardt,
)
from hesskit.problem import Problem

DTYPE = torch.float64
WD = 0.3  # weight decay of the weight group only


def least_squares(seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 5, generator=gen, dtype=DTYPE)
    Y = torch.randn(40, 2, generator=gen, dtype=DTYPE)
    torch.manual_seed(seed)
    return nn.Linear(5, 2).to(DTYPE), X, Y


def groups(model, lr=1.0):
    return [{"params": [model.weight], "weight_decay": WD, "lr": lr},
            {"params": [model.bias], "weight_decay": 0.0}]


def hand_objective(model, X, Y):
    """F(W, b) = mse + (WD/2)‖W‖², written out here (not by the optimizer)."""
    def F(W, b):
        return nn.functional.mse_loss(X @ W.T + b, Y) + 0.5 * WD * W.square().sum()
    return F


def newton_minimiser(model, X, Y):
    """θ* = θ − ∇²F⁻¹ ∇F from torch.autograd on the hand-written F (F is quadratic)."""
    F = hand_objective(model, X, Y)
    W, b = model.weight.detach().clone(), model.bias.detach().clone()
    flat = torch.cat([W.reshape(-1), b])

    def f(theta):
        return F(theta[:10].reshape(2, 5), theta[10:])

    g = torch.autograd.grad(f(flat.requires_grad_()), flat)[0]
    return flat.detach() - torch.linalg.solve(hessian(f, flat.detach()), g)


def closure_for(model, optimizer, X, Y):
    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y)
        loss.backward()
        return loss
    return closure


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def make_hf(model, X, Y, lr=1.0, statistic=None):
    return HessianFree(
        groups(model, lr), curvature=lambda: gauss_newton_operator(
            Problem(model, nn.MSELoss(), (X, Y))),
        damping=LevenbergMarquardt(initial=1e-12, adapt=False),
        cg=CGSettings(max_iterations=100, rtol=1e-13), backtracking=False, line_search=None,
        preconditioner=None if statistic is None else DiagonalPreconditioner(statistic),
    )


def test_hf_weight_decay_per_group_reaches_objective_gradient_curvature_and_preconditioner(
    monkeypatch,
):
    model, X, Y = least_squares()
    expected_loss = float(hand_objective(model, X, Y)(model.weight, model.bias).detach())
    target = newton_minimiser(model, X, Y)
    preconditioners = []
    real = hessian_free_module.conjugate_gradient

    def spy(*args, **kwargs):
        preconditioners.append(kwargs["M"](torch.ones(12, dtype=DTYPE)))
        return real(*args, **kwargs)

    monkeypatch.setattr(hessian_free_module, "conjugate_gradient", spy)
    optimizer = make_hf(model, X, Y, statistic=lambda: torch.zeros(12, dtype=DTYPE))
    returned = optimizer.step(closure_for(model, optimizer, X, Y))
    assert isinstance(returned, torch.Tensor) and returned.ndim == 0
    assert float(returned) == pytest.approx(expected_loss, rel=1e-14)  # objective
    torch.testing.assert_close(flat(model), target, rtol=0, atol=1e-9)  # gradient, curvature
    decay = torch.tensor([WD] * 10 + [0.0] * 2, dtype=DTYPE)
    want = torch.where(decay + 1e-12 > 0, (decay + 1e-12) ** -0.75, 1.0)
    torch.testing.assert_close(preconditioners[0], want, rtol=1e-12, atol=0)


def test_newton_weight_decay_per_group_lands_on_the_minimiser_of_the_hand_objective():
    model, X, Y = least_squares()
    expected_loss = float(hand_objective(model, X, Y)(model.weight, model.bias).detach())
    target = newton_minimiser(model, X, Y)
    optimizer = DampedNewton(
        groups(model), hessian=Problem(model, nn.MSELoss(), (X, Y)),
        damping=LevenbergMarquardt(initial=0.0, adapt=False, nan_raises=False),
    )
    returned = optimizer.step(closure_for(model, optimizer, X, Y))
    assert isinstance(returned, torch.Tensor)
    assert float(returned) == pytest.approx(expected_loss, rel=1e-14)
    torch.testing.assert_close(flat(model), target, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["hf", "newton"])
def test_a_step_lr_scheduler_scales_the_next_step(kind):
    moves = []
    for schedule in (False, True):
        model, X, Y = least_squares()
        if kind == "hf":
            optimizer = make_hf(model, X, Y)
        else:
            optimizer = DampedNewton(
                groups(model), hessian=Problem(model, nn.MSELoss(), (X, Y)),
                damping=LevenbergMarquardt(initial=1.0, adapt=False))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        closure = closure_for(model, optimizer, X, Y)
        optimizer.step(closure)
        if schedule:
            scheduler.step()
        before = flat(model)
        optimizer.step(closure)
        moves.append(flat(model) - before)
    torch.testing.assert_close(moves[1], 0.5 * moves[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["hf", "newton"])
def test_add_param_group_is_refused_and_step_needs_a_closure(kind):
    model, X, Y = least_squares()
    optimizer = make_hf(model, X, Y) if kind == "hf" else DampedNewton(
        groups(model), hessian=Problem(model, nn.MSELoss(), (X, Y)))
    extra = nn.Parameter(torch.zeros(3, dtype=DTYPE))
    with pytest.raises(InvalidArgumentError, match="cannot add a parameter group"):
        optimizer.add_param_group({"params": [extra]})
    assert len(optimizer.param_groups) == 2
    with pytest.raises(InvalidArgumentError, match=r"step needs a closure .* backward\(\)"):
        optimizer.step()


def test_a_negative_group_weight_decay_is_refused():
    model, _, _ = least_squares()
    with pytest.raises(InvalidArgumentError, match=r"weight_decay must be .* group 1"):
        HessianFree([{"params": [model.weight]},
                     {"params": [model.bias], "weight_decay": -1.0}], curvature=lambda: None)


def autoencoder_run(model, data, steps, optimizer=None, state=None):
    loss_fn = MSELoss(reduction="sample_mean")
    if optimizer is None:
        optimizer = HessianFree.martens2010(model, loss_fn, (data, data), numchunks=4,
                                            weight_decay=1e-3)
    if state is not None:
        optimizer.load_state_dict(state)

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(data), data)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    return optimizer


def test_martens_preset_cycles_its_chunks_and_resumes_bit_identically(monkeypatch):
    import hesskit.optim.hessian_free.martens as martens

    seen = []
    real = martens.gauss_newton_operator

    def spy(problem):
        seen.append(next(iter(problem.batches())).inputs.clone())
        return real(problem)

    monkeypatch.setattr(martens, "gauss_newton_operator", spy)
    torch.manual_seed(0)
    model = mlp([6, 4, 2, 4, 6]).to(DTYPE)
    data = torch.randn(32, 6, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    optimizer = autoencoder_run(model, data, steps=3)
    seen_first = list(seen)
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(optimizer.state_dict())
    autoencoder_run(model, data, steps=3, optimizer=optimizer)

    torch.manual_seed(7)
    resumed = mlp([6, 4, 2, 4, 6]).to(DTYPE)
    resumed.load_state_dict(saved_model)
    fresh = autoencoder_run(resumed, data, steps=3, state=saved)
    assert fresh.hf_state["steps"] == 6
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    # diag(EF) comes from the gradient pass: no separate statistic pass
    assert fresh.statistic_passes == 0 and optimizer.statistic_passes == 0
    # the curvature chunk changes every step and covers the data in numchunks = 4 steps
    chunks = seen_first + seen[3:4]
    assert all(len(c) == 8 for c in chunks)
    assert sorted(map(tuple, torch.cat(chunks).tolist())) == sorted(map(tuple, data.tolist()))
    assert torch.equal(seen[4], seen[0])  # step 5 reuses step 1's chunk


def test_state_dict_round_trips_the_groups_settings_and_the_optimizer_wide_state():
    model, X, Y = least_squares()
    optimizer = make_hf(model, X, Y, lr=0.5)
    optimizer.step(closure_for(model, optimizer, X, Y))
    saved = copy.deepcopy(optimizer.state_dict())
    twin = make_hf(model, X, Y, lr=1.0)
    twin.load_state_dict(saved)
    assert [g["lr"] for g in twin.param_groups] == [0.5, 1.0]
    assert [g["weight_decay"] for g in twin.param_groups] == [WD, 0.0]
    assert twin.hf_state["steps"] == 1
    assert torch.equal(twin.hf_state["warm_start"], optimizer.hf_state["warm_start"])
