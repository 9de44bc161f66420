"""DampedNewton: one step on a quadratic, saddle handling, Adam comparison, safety, resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from hesskit.errors import NonFiniteError, TooLargeError
from hesskit.models import mlp
from hesskit.optim import DampedNewton, Indefinite, LevenbergMarquardt
from hesskit.optim.newton import _dense_hessian
from hesskit.problem import Problem
from reference import autograd_hessian

DTYPE = torch.float64


def make_closure(optimizer, loss_fn):
    def closure():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    return closure


def test_one_step_lands_on_the_minimiser_of_a_strictly_convex_quadratic():
    gen = torch.Generator().manual_seed(0)
    root = torch.randn(6, 6, generator=gen, dtype=DTYPE)
    A = root @ root.T + 0.5 * torch.eye(6, dtype=DTYPE)
    b = torch.randn(6, generator=gen, dtype=DTYPE)
    theta = nn.Parameter(torch.randn(6, generator=gen, dtype=DTYPE))
    optimizer = DampedNewton([theta], hessian=lambda: A)
    optimizer.step(make_closure(optimizer, lambda: 0.5 * theta @ A @ theta - b @ theta))
    torch.testing.assert_close(theta.detach(), torch.linalg.solve(A, b), rtol=1e-10, atol=1e-12)
    assert optimizer.newton_state["last_ratio"] == pytest.approx(1.0)


def test_linear_least_squares_with_a_problem_is_solved_in_one_step():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(30, 4, generator=gen, dtype=DTYPE)
    Y = torch.randn(30, 1, generator=gen, dtype=DTYPE)
    model = nn.Linear(4, 1).to(DTYPE)
    optimizer = DampedNewton(model.parameters(), hessian=Problem(model, nn.MSELoss(), (X, Y)))
    optimizer.step(make_closure(optimizer, lambda: nn.functional.mse_loss(model(X), Y)))
    design = np.hstack([X.numpy(), np.ones((30, 1))])
    coef, *_ = np.linalg.lstsq(design, Y.numpy(), rcond=None)
    np.testing.assert_allclose(model.weight.detach().numpy().ravel(), coef[:-1, 0], atol=1e-10)
    np.testing.assert_allclose(model.bias.detach().numpy(), coef[-1], atol=1e-10)


def test_dense_hessian_of_a_problem_matches_autograd():
    torch.manual_seed(0)
    model = mlp([3, 4, 2], activation="tanh").to(DTYPE)
    X, Y = torch.randn(10, 3, dtype=DTYPE), torch.randn(10, 2, dtype=DTYPE)
    expected = autograd_hessian(model, nn.functional.mse_loss, X, Y)
    got = _dense_hessian(Problem(model, nn.MSELoss(), (X, Y)))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def saddle_loss(theta):
    """½(x² − y²) + ¼(x⁴ + y⁴): a saddle at 0, minima at (0, ±1)."""
    return 0.5 * (theta[0] ** 2 - theta[1] ** 2) + 0.25 * (theta**4).sum()


def test_saddle_free_step_is_minus_absolute_hessian_inverse_gradient():
    theta = nn.Parameter(torch.tensor([1.0, 0.1], dtype=DTYPE))
    # by hand at (1, 0.1): g = (2, -0.099), H = diag(4, -0.97), |H| = diag(4, 0.97)
    optimizer = DampedNewton(
        [theta],
        hessian=lambda: torch.diag(torch.tensor([4.0, -0.97], dtype=DTYPE)),
        indefinite=Indefinite.SADDLE_FREE,
    )
    optimizer.step(make_closure(optimizer, lambda: saddle_loss(theta)))
    expected = torch.tensor([1.0 - 2.0 / 4.0, 0.1 + 0.099 / 0.97], dtype=DTYPE)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-12, atol=1e-14)


def test_damping_mode_raises_lambda_past_the_most_negative_eigenvalue_and_descends():
    theta = nn.Parameter(torch.tensor([1.0, 0.1], dtype=DTYPE))
    optimizer = DampedNewton(
        [theta], hessian=lambda: torch.func.hessian(saddle_loss)(theta.detach())
    )
    before = float(saddle_loss(theta.detach()))
    optimizer.step(make_closure(optimizer, lambda: saddle_loss(theta)))
    # H = diag(4, -0.97): λ grows 1e-4 · 1.5^k until λ > 0.97, then p = −(H + λI)⁻¹ g
    k = int(np.ceil(np.log(0.97 / 1e-4) / np.log(1.5)))
    used = 1e-4 * 1.5**k
    expected = torch.tensor([1.0 - 2.0 / (4.0 + used), 0.1 + 0.099 / (used - 0.97)], dtype=DTYPE)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-10, atol=1e-12)
    assert float(saddle_loss(theta.detach())) < before


def relu_regression():
    """A 2-16-1 ReLU student fitting a 2-3-1 ReLU teacher (realizable) on 64 points."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 2, generator=gen, dtype=DTYPE)
    torch.manual_seed(100)
    teacher = mlp([2, 3, 1]).to(DTYPE)
    with torch.no_grad():
        Y = teacher(X)
    torch.manual_seed(0)
    return mlp([2, 16, 1]).to(DTYPE), X, Y


def test_newton_on_relu_regression_beats_adam_with_ten_times_fewer_iterations():
    model, X, Y = relu_regression()
    twin = copy.deepcopy(model)
    newton = DampedNewton(model.parameters(), hessian=Problem(model, nn.MSELoss(), (X, Y)))
    closure = make_closure(newton, lambda: nn.functional.mse_loss(model(X), Y))
    for _ in range(20):
        newton.step(closure)
    adam = torch.optim.Adam(twin.parameters(), lr=1e-2)
    for _ in range(200):
        adam.zero_grad()
        nn.functional.mse_loss(twin(X), Y).backward()
        adam.step()
    newton_loss = float(nn.functional.mse_loss(model(X), Y).detach())
    adam_loss = float(nn.functional.mse_loss(twin(X), Y).detach())
    print(f"newton {newton_loss:.3e} after 20 steps, adam {adam_loss:.3e} after 200")
    assert newton_loss < adam_loss


def test_a_model_too_large_for_a_dense_hessian_is_refused_at_construction(monkeypatch):
    monkeypatch.setattr("hesskit.memory.available_memory", lambda: 2 * 10**9)  # budget 1 GB
    model = nn.Linear(200, 100)  # 3 N² float32 numbers: 4.8 GB
    problem = Problem(model, nn.MSELoss(), (torch.randn(2, 200), torch.randn(2, 100)))
    with pytest.raises(TooLargeError, match=r"N = 20100 parameters needs .* use HessianFree"):
        DampedNewton(model.parameters(), hessian=problem)


@pytest.mark.parametrize("poison", ["loss", "gradient", "hessian"])
def test_a_non_finite_step_is_rejected_bitwise_and_grows_the_damping(poison):
    model, X, Y = relu_regression()
    problem = Problem(model, nn.MSELoss(), (X, Y))

    def hessian():
        H = _dense_hessian(problem)
        return H * float("nan") if poison == "hessian" else H

    optimizer = DampedNewton(
        model.parameters(), hessian=hessian, damping=LevenbergMarquardt(initial=0.5)
    )

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y)
        loss.backward()
        if poison == "gradient":
            model[0].bias.grad[0] = -float("inf")
        return loss * float("inf") if poison == "loss" else loss

    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert optimizer.newton_state["damping"] == 0.75
    assert optimizer.newton_state["nonfinite_rejections"] == 1
    for _ in range(8):
        optimizer.step(closure)
    with pytest.raises(NonFiniteError, match="10 steps in a row"):
        optimizer.step(closure)


def test_state_dict_round_trip_resumes_bit_identically():
    model, X, Y = relu_regression()

    def run(model, optimizer, steps):
        closure = make_closure(optimizer, lambda: nn.functional.mse_loss(model(X), Y))
        for _ in range(steps):
            optimizer.step(closure)

    def make(model):
        return DampedNewton(model.parameters(), hessian=Problem(model, nn.MSELoss(), (X, Y)))

    optimizer = make(model)
    run(model, optimizer, 3)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), optimizer.state_dict()
    run(model, optimizer, 3)
    resumed, _, _ = relu_regression()
    resumed.load_state_dict(saved_model)
    fresh = make(resumed)
    fresh.load_state_dict(copy.deepcopy(saved_optimizer))
    run(resumed, fresh, 3)
    pairs = zip(model.parameters(), resumed.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    assert fresh.newton_state == optimizer.newton_state



def newton_run(use_loss_closure: bool, steps: int = 5):
    """Damped Newton on the ReLU regression; returns the model and, for each trial-point
    evaluation by the loss closure, whether grad was enabled."""
    model, X, Y = relu_regression()
    newton = DampedNewton(model.parameters(), hessian=Problem(model, nn.MSELoss(), (X, Y)))
    closure = make_closure(newton, lambda: nn.functional.mse_loss(model(X), Y))
    graded = []

    def loss_closure():
        graded.append(torch.is_grad_enabled())
        return nn.functional.mse_loss(model(X), Y)

    for _ in range(steps):
        newton.step(closure, loss_closure=loss_closure if use_loss_closure else None)
    return model, graded


def test_a_loss_closure_evaluates_the_trial_point_without_grad_and_changes_no_step():
    plain, _ = newton_run(use_loss_closure=False)
    lean, graded = newton_run(use_loss_closure=True)
    assert graded == [False] * 5  # one trial point a step, evaluated under no_grad
    for a, b in zip(plain.parameters(), lean.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_cholesky_retries_stop_at_the_rules_ceiling_and_reject_the_step():
    """H = diag(−1e4, 1): H + λI is positive definite only for λ > 1e4, above the ceiling
    1e3. The retries go through ``LevenbergMarquardt.increased``: λ climbs 1e-4 · 1.5^k to
    the ceiling and stops there (before, its own rule passed the ceiling: λ ≈ 8.4e3 after
    the first step), the step is rejected with the parameters bitwise unchanged."""
    H = torch.diag(torch.tensor([-1e4, 1.0], dtype=DTYPE))
    g = torch.tensor([1.0, -2.0], dtype=DTYPE)
    theta = nn.Parameter(torch.tensor([0.5, 0.5], dtype=DTYPE))
    rule = LevenbergMarquardt(initial=0.0, floor=1e-4, ceiling=1e3, nan_raises=False)
    optimizer = DampedNewton([theta], hessian=lambda: H, damping=rule)
    start = theta.detach().clone()
    closure = make_closure(optimizer, lambda: 0.5 * theta @ H @ theta + g @ theta)
    for _ in range(5):
        optimizer.step(closure)
        assert optimizer.newton_state["damping"] == 1e3
        assert torch.equal(theta.detach(), start)
    assert optimizer.newton_state["rejected_steps"] == 5


def test_a_damping_loaded_above_the_ceiling_is_kept_and_never_overflows():
    """A λ of 1e300 (above the ceiling, e.g. from a state dict) on an indefinite H: the old
    retry multiplied it by 1.5 until H + λI factored (1.3e305, a step from overflow); the
    rule keeps a λ above its ceiling as it is."""
    H = torch.diag(torch.tensor([-1e305, 1.0], dtype=DTYPE))
    theta = nn.Parameter(torch.tensor([0.5, 0.5], dtype=DTYPE))
    optimizer = DampedNewton([theta], hessian=lambda: H)
    optimizer.newton_state["damping"] = 1e300
    closure = make_closure(optimizer, lambda: (theta * theta).sum())
    for _ in range(3):
        optimizer.step(closure)
        assert optimizer.newton_state["damping"] == 1e300
