"""K-FAC: factors against their definitions, the operator against the exact GGN where K-FAC
is exact, its inverse against a dense solve, the optimizer's first step by hand, its
constants, state_dict resume and non-finite rejection."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from closures import batch_closure
from hesskit.estimators import top_eigenpairs
from hesskit.operators import gauss_newton_operator
from hesskit.operators.kfac import kfac_operator
from hesskit.operators.kfac_factors import FactorTargets, linear_blocks
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACSchedule, quadratic_step
from hesskit.problem import Problem

DTYPE = torch.float64


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DTYPE)


def classification(n: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=DTYPE), torch.randint(0, 3, (n,), generator=gen)


def test_factors_equal_their_definitions_by_brute_force_over_samples():
    model, (X, Y) = mlp(), classification()
    problem = Problem(model, nn.CrossEntropyLoss(), (X, Y))
    op = kfac_operator(problem, targets=FactorTargets.EMPIRICAL)
    first, second = model[0], model[2]
    n = X.shape[0]
    A1 = torch.zeros(5, 5, dtype=DTYPE)
    A2 = torch.zeros(6, 6, dtype=DTYPE)
    G1 = torch.zeros(5, 5, dtype=DTYPE)
    G2 = torch.zeros(3, 3, dtype=DTYPE)
    for i in range(n):  # sample by sample: ā ā ᵀ and g gᵀ of the unscaled sample loss
        x = X[i : i + 1]
        s1 = first(x)
        h = torch.tanh(s1)
        s2 = second(h)
        loss_i = nn.functional.cross_entropy(s2, Y[i : i + 1], reduction="sum")
        g1, g2 = torch.autograd.grad(loss_i, [s1, s2])
        a1 = torch.cat([x[0], torch.ones(1, dtype=DTYPE)])
        a2 = torch.cat([h[0].detach(), torch.ones(1, dtype=DTYPE)])
        A1 += torch.outer(a1, a1) / n
        A2 += torch.outer(a2, a2) / n
        G1 += torch.outer(g1[0], g1[0]) / n  # a_i = 1/n for a mean cross-entropy
        G2 += torch.outer(g2[0], g2[0]) / n
    torch.testing.assert_close(op.factors["0.weight"].A, A1, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.factors["2.weight"].A, A2, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.factors["0.weight"].G, G1, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.factors["2.weight"].G, G2, rtol=0, atol=1e-12)


def one_layer_regression(bias: bool = True, n: int = 20):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = nn.Linear(4, 3, bias=bias).to(DTYPE)
    X = torch.randn(n, 4, generator=gen, dtype=DTYPE)
    return model, X, torch.randn(n, 3, generator=gen, dtype=DTYPE)


def test_kronecker_product_is_the_exact_ggn_of_a_one_layer_mse_model():
    # H_ℓ = 2c I does not depend on z, so Σ_i c (ā āᵀ) ⊗ 2I = A ⊗ G exactly.
    model, X, Y = one_layer_regression()
    problem = Problem(model, nn.MSELoss(), (X, Y))
    exact = gauss_newton_operator(problem).to_dense()
    kfac = kfac_operator(problem, targets=FactorTargets.EXPECTED).to_dense()
    torch.testing.assert_close(kfac, exact, rtol=0, atol=1e-13)


def test_kronecker_product_is_the_exact_ggn_of_one_cross_entropy_sample():
    model = nn.Linear(4, 3).to(DTYPE)
    X, Y = classification(n=1)
    problem = Problem(model, nn.CrossEntropyLoss(), (X, Y))
    exact = gauss_newton_operator(problem).to_dense()
    kfac = kfac_operator(problem, targets=FactorTargets.EXPECTED).to_dense()
    torch.testing.assert_close(kfac, exact, rtol=0, atol=1e-13)


def test_inverse_and_diagonal_match_the_dense_matrix():
    model, (X, Y) = mlp(), classification()
    op = kfac_operator(Problem(model, nn.CrossEntropyLoss(), (X, Y)), generator=0)
    dense = op.to_dense()
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    solve = torch.linalg.solve(dense + 0.1 * torch.eye(op.shape[0], dtype=DTYPE), v)
    torch.testing.assert_close(op.inverse_matvec(v, 0.1), solve, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.diagonal(), dense.diagonal(), rtol=0, atol=1e-14)


def test_factored_inverse_is_the_inverse_of_the_factored_damping():
    model, X, Y = one_layer_regression(bias=False)
    op = kfac_operator(Problem(model, nn.MSELoss(), (X, Y)), targets=FactorTargets.EXPECTED)
    f = op.factors["weight"]
    lam = 0.3
    pi = math.sqrt((f.A.trace() / 4) / (f.G.trace() / 3))
    gamma = math.sqrt(lam)
    damped = torch.kron(f.G + gamma / pi * torch.eye(3, dtype=DTYPE),
                        f.A + pi * gamma * torch.eye(4, dtype=DTYPE))  # row-major W
    v = torch.randn(12, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    got = op.inverse_matvec(v, lam, factored=True)
    torch.testing.assert_close(got, torch.linalg.solve(damped, v), rtol=1e-10, atol=1e-12)


def test_constants_are_the_papers():
    schedule = KFACSchedule()
    assert schedule.initial_damping == 150.0  # §13
    assert (schedule.damping_interval, schedule.gamma_interval, schedule.inverse_interval) == (
        5, 20, 20)
    assert schedule.initial_inverse_steps == 3 and schedule.max_decay == 0.95
    assert schedule.statistics_fraction == 1 / 8
    assert schedule.omega1 == pytest.approx(0.95**5, rel=1e-15)
    assert schedule.omega2 == pytest.approx(0.95**10, rel=1e-12)
    assert [schedule.decay(k) for k in (1, 2, 10, 100)] == [0.0, 0.5, 0.9, 0.95]
    rule = KFACSchedule(damping_interval=1).damping_rule  # ω₁ = 19/20
    assert rule.updated(0.8, 10.0) == pytest.approx(9.5, rel=1e-15)
    assert rule.updated(0.1, 10.0) == pytest.approx(200 / 19, rel=1e-15)
    assert rule.updated(0.5, 10.0) == 10.0


def test_quadratic_step_minimises_the_model_in_the_span():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(5, 5, generator=gen, dtype=DTYPE)
    C = M @ M.T + torch.eye(5, dtype=DTYPE)
    g, d, p = (torch.randn(5, generator=gen, dtype=DTYPE) for _ in range(3))
    q = quadratic_step(g, d, p, C @ d, C @ p, 0.5)
    B = torch.stack([d, p], 1)
    coef = torch.linalg.solve(B.T @ (C + 0.5 * torch.eye(5, dtype=DTYPE)) @ B, -B.T @ g)
    assert (q.alpha, q.mu) == pytest.approx(coef.tolist(), rel=1e-12)
    delta = coef[0] * d + coef[1] * p
    model = 0.5 * delta @ (C + 0.5 * torch.eye(5, dtype=DTYPE)) @ delta + g @ delta
    assert q.model_decrease == pytest.approx(float(model), rel=1e-12)


def test_first_step_matches_a_hand_computation_on_linear_regression():
    model, X, Y = one_layer_regression(bias=False)
    problem = Problem(model, nn.MSELoss(), (X, Y))
    theta = model.weight.detach().reshape(-1).clone()
    g = problem.gradient()
    G = gauss_newton_operator(problem).to_dense()
    A = X.T @ X / X.shape[0]
    Gf = 2 * torch.eye(3, dtype=DTYPE) / 3  # c Σ_i 2I with c = 1/(n k), k = 3
    gamma = math.sqrt(150.0)
    pi = math.sqrt((A.trace() / 4) / (Gf.trace() / 3))
    damped = torch.kron(Gf + gamma / pi * torch.eye(3, dtype=DTYPE),
                        A + pi * gamma * torch.eye(4, dtype=DTYPE))
    direction = -torch.linalg.solve(damped, g)
    alpha = -(g @ direction) / (direction @ G @ direction + 150.0 * direction @ direction)
    opt = KFAC(model.parameters(), model=model, loss=nn.MSELoss(), targets=FactorTargets.EXPECTED,
               schedule=KFACSchedule(statistics_fraction=1.0))
    opt_closure = batch_closure(opt, X, Y)
    opt.step(opt_closure)
    torch.testing.assert_close(model.weight.detach().reshape(-1), theta + alpha * direction,
                               rtol=1e-10, atol=1e-12)


def test_converges_on_linear_regression_like_newton_when_exact_and_undamped():
    # Here F̆ = G = the Hessian, so with little damping a step is nearly Newton's.
    model, X, Y = one_layer_regression()
    Xb = torch.cat([X, torch.ones(X.shape[0], 1, dtype=DTYPE)], 1)
    best = nn.functional.mse_loss(Xb @ torch.linalg.lstsq(Xb, Y).solution, Y)
    schedule = KFACSchedule(statistics_fraction=1.0, initial_damping=1e-8)
    opt = KFAC(model.parameters(), model=model, loss=nn.MSELoss(), targets=FactorTargets.EXPECTED,
               schedule=schedule)
    opt_closure = batch_closure(opt, X, Y)
    for _ in range(3):
        opt.step(opt_closure)
    assert float(opt.step(opt_closure)) - float(best) < 1e-10


def test_uses_the_closure_and_covers_only_linear_layers():
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)).to(DTYPE)
    blocks = linear_blocks(model, [n for n, _ in model.named_parameters()])
    assert [b.module for b in blocks] == ["0", "2"]
    X, Y = classification()
    loss_fn = nn.CrossEntropyLoss()
    opt = KFAC(model.parameters(), model=model, loss=loss_fn,
               schedule=KFACSchedule(statistics_fraction=1.0))

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(X), Y)
        loss.backward()
        return loss

    first = float(opt.step(closure))
    for _ in range(5):
        last = float(opt.step(closure))
    assert last < first


def run(model, opt, X, Y, steps):
    opt_closure = batch_closure(opt, X, Y)
    for _ in range(steps):
        opt.step(opt_closure)


def test_state_dict_round_trip_resumes_bit_identically():
    X, Y = classification(n=16)
    schedule = KFACSchedule(statistics_fraction=0.5, damping_interval=2, gamma_interval=3,
                            inverse_interval=2)
    model = mlp()
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(), schedule=schedule,
               seed=4)
    run(model, opt, X, Y, 2)
    twin = copy.deepcopy(model)
    twin_opt = KFAC(twin.parameters(), model=twin, loss=nn.CrossEntropyLoss(), schedule=schedule,
                    seed=99)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    run(model, opt, X, Y, 4)
    run(twin, twin_opt, X, Y, 4)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt.kfac_state["damping"] == twin_opt.kfac_state["damping"]


def test_non_finite_loss_is_rejected_leaving_parameters_unchanged():
    model = mlp()
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(),
               schedule=KFACSchedule(statistics_fraction=1.0))
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda: torch.tensor(float("nan"), dtype=DTYPE))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.kfac_state["nonfinite_rejections"] == 1 and opt.kfac_state["steps"] == 0
    assert opt.kfac_state["damping"] == 150.0  # a bad batch says nothing about the model


def test_the_kfac_operator_works_with_the_matrix_free_estimators():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    X, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    op = kfac_operator(Problem(model, nn.CrossEntropyLoss(), (X, y)),
                       targets=FactorTargets.EXPECTED)
    dense = op.to_dense()
    expected = torch.linalg.eigvalsh(dense)[-2:].flip(0)
    found = top_eigenpairs(op, 2, tol=1e-8)
    torch.testing.assert_close(torch.as_tensor(found.values, dtype=torch.float64)[:2], expected,
                               rtol=1e-6, atol=1e-10)
    assert op.trace() == pytest.approx(float(dense.trace()), rel=1e-10)
