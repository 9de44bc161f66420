"""The preconditioner analysis against closed forms, dense matrices and the optimizers' steps."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from closures import batch_closure
from hesskit.analysis.preconditioner import (
    AnalysisSettings,
    compare_scope,
    layer_groups,
)
from hesskit.analysis.preconditioner_adapters import (
    diagonal_preconditioner,
    identity_preconditioner,
    matrix_preconditioner,
    preconditioner_of,
)
from hesskit.analysis.preconditioner_records import MODEL, PreconditionerAnalysis
from hesskit.errors import InvalidArgumentError
from hesskit.layout import ParameterLayout
from hesskit.operators import MatrixOperator
from hesskit.optim.diagonal.adahessian import AdaHessian
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.problem import Problem
from hesskit.training.preconditioner_run import OptimizerChoice, preconditioner_analysis
from reference import autograd_gauss_newton

LAM = 0.1
EXACT = AnalysisSettings(damping=LAM, top_k=4, tol=1e-10, max_products=400, cg_rtol=1e-13,
                         cg_maxiter=400)


def spd(n: int, seed: int, eigenvalues: torch.Tensor | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    values = eigenvalues if eigenvalues is not None else torch.logspace(-2, 2, n,
                                                                        dtype=torch.float64)
    return (Q * values) @ Q.T


def vector(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_preconditioner_equal_to_the_damped_curvature_is_newton_exactly():
    G = spd(12, 0)
    P = matrix_preconditioner(G + LAM * torch.eye(12, dtype=torch.float64))
    g, step = vector(12, 1), vector(12, 2)
    scope = compare_scope(MODEL, MatrixOperator(G, psd=True), P, g, step, EXACT)
    assert scope.preconditioned.condition_damped == pytest.approx(1, abs=1e-8)
    assert scope.preconditioned_direction.cosine == pytest.approx(1, abs=1e-10)
    assert scope.preconditioned_direction.decrease_ratio_line == pytest.approx(1, abs=1e-10)
    assert scope.preconditioned_direction.decrease_ratio_taken == pytest.approx(1, abs=1e-10)
    # G's own: κ(G + λI) from its eigenvalues 1e-2 … 1e2
    assert scope.curvature.condition_damped == pytest.approx((100 + LAM) / (0.01 + LAM),
                                                             rel=1e-8)


def test_preconditioner_equal_to_the_curvature_has_unit_spread_and_the_damped_closed_form():
    G = spd(12, 3)
    scope = compare_scope(MODEL, MatrixOperator(G, psd=True), matrix_preconditioner(G),
                          vector(12, 4), vector(12, 5), EXACT)
    assert scope.preconditioned.top == pytest.approx([1.0] * 4, abs=1e-9)
    assert scope.preconditioned.condition_top_k == pytest.approx(1, abs=1e-9)
    # P^-1/2 (G + λI) P^-1/2 = I + λ G⁻¹: κ = (1 + λ/g_min) / (1 + λ/g_max)
    assert scope.preconditioned.condition_damped == pytest.approx(
        (1 + LAM / 0.01) / (1 + LAM / 100), rel=1e-8)


def test_identity_preconditioner_reports_the_own_numbers_of_a_singular_curvature():
    values = torch.tensor([0.0] * 5 + [0.5, 1, 2, 4, 8, 16, 32], dtype=torch.float64)
    G = spd(12, 6, values)
    g = G @ vector(12, 7)  # in G's range
    scope = compare_scope(MODEL, MatrixOperator(G, psd=True),
                          identity_preconditioner(ParameterLayout(("x",), (torch.Size([12]),)),
                                                  torch.float64, torch.device("cpu")),
                          g, -g, EXACT)
    assert scope.curvature is scope.preconditioned
    assert scope.curvature.top == pytest.approx([32, 16, 8, 4], rel=1e-9)
    assert scope.curvature.condition_top_k == pytest.approx(8, rel=1e-9)
    assert scope.curvature.condition_damped == pytest.approx((32 + LAM) / LAM, rel=1e-7)
    assert scope.curvature.damped_converged
    newton = -torch.linalg.solve(G + LAM * torch.eye(12, dtype=torch.float64), g)
    cos = float(-g @ newton / (g.norm() * newton.norm()))
    assert scope.preconditioned_direction.cosine == pytest.approx(cos, rel=1e-9)
    assert scope.step_direction.cosine == pytest.approx(cos, rel=1e-9)
    # the step −g as taken: m(−g) / m(d_N)
    B = G + LAM * torch.eye(12, dtype=torch.float64)
    taken = float(-g @ g + 0.5 * g @ B @ g)
    best = float(0.5 * g @ newton)
    assert scope.step_direction.decrease_ratio_taken == pytest.approx(taken / best, rel=1e-8)


def test_diagonal_preconditioner_on_a_diagonal_quadratic_matches_the_closed_form():
    a = torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 100.0], dtype=torch.float64)
    p = a.sqrt()  # RMSProp-like: the square root of the curvature
    layout = ParameterLayout(("x",), (torch.Size([6]),))
    g = torch.tensor([1.0, -2.0, 0.5, 1.5, -1.0, 0.3], dtype=torch.float64)
    scope = compare_scope(MODEL, MatrixOperator(torch.diag(a), psd=True),
                          diagonal_preconditioner(p, layout, "test"), g, -g / p, EXACT,
                          {"diag G": a, "reversed": a.flip(0)})
    mu = (a / p).sort(descending=True).values
    assert scope.preconditioned.top == pytest.approx(mu[:4].tolist(), rel=1e-9)
    damped = (a + LAM) / p
    assert scope.preconditioned.condition_damped == pytest.approx(
        float(damped.max() / damped.min()), rel=1e-8)
    d, newton = -g / p, -g / (a + LAM)
    cos = float(d @ newton / (d.norm() * newton.norm()))
    assert scope.preconditioned_direction.cosine == pytest.approx(cos, rel=1e-10)
    gd, dBd = float(g @ d), float(d @ ((a + LAM) * d))
    line = -(gd**2) / (2 * dBd) / float(0.5 * g @ newton)
    assert scope.preconditioned_direction.decrease_ratio_line == pytest.approx(line, rel=1e-10)
    by_name = {c.diagonal: c for c in scope.diagonals}
    assert by_name["diag G"].spearman == pytest.approx(1.0)
    assert by_name["reversed"].spearman == pytest.approx(
        spearmanr(p.numpy(), a.flip(0).numpy()).statistic)
    assert by_name["diag G"].scale == pytest.approx(float((p / a).median()))


def small_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def batch(seed: int = 1, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, generator=generator, dtype=torch.float64),
            torch.randn(n, 2, generator=generator, dtype=torch.float64))


def take_steps(model, optimizer, count: int, closure_kind: str = "backward"):
    X, y = batch()
    loss_fn = nn.MSELoss()
    for _ in range(count):
        def closure():
            optimizer.zero_grad()
            value = loss_fn(model(X), y)
            if closure_kind == "backward":
                value.backward()
            return value

        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step(closure)
    after = [p.detach().clone() for p in model.parameters()]
    return torch.cat([(a - b).reshape(-1) for a, b in zip(after, before, strict=True)])


def layout_of(model: nn.Module) -> tuple[list[torch.Tensor], ParameterLayout]:
    named = dict(model.named_parameters())
    return list(named.values()), ParameterLayout.from_tensors(named)


def first_moment(optimizer, params, beta1: float) -> torch.Tensor:
    return torch.cat([(optimizer.state[p]["exp_avg"]
                       / (1 - beta1 ** float(optimizer.state[p]["step"]))).reshape(-1)
                      for p in params])


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_preconditioner_gives_the_step_adam_takes(amsgrad):
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=amsgrad)
    step = take_steps(model, optimizer, 3)
    params, layout = layout_of(model)
    P = preconditioner_of(optimizer, params, layout)
    expected = -0.01 * P.inverse.matvec(first_moment(optimizer, params, 0.9))
    torch.testing.assert_close(step, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(P.inverse_sqrt.matvec(P.matrix.matvec(
        P.inverse_sqrt.matvec(step))), step, rtol=1e-12, atol=1e-15)


def test_rmsprop_and_adahessian_preconditioners_give_their_steps():
    model = small_model()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01)
    X, y = batch()
    step = take_steps(model, optimizer, 2)
    params, layout = layout_of(model)
    before = [p.detach() - s.view_as(p) for p, s in zip(
        params, layout.unflatten(step).values(), strict=True)]
    gradient = Problem(model, nn.MSELoss(), (X, y)).gradient(
        dict(zip(layout.names, before, strict=True)))
    P = preconditioner_of(optimizer, params, layout)
    torch.testing.assert_close(step, -0.01 * P.inverse.matvec(gradient), rtol=1e-10, atol=1e-14)

    model = small_model()
    optimizer = AdaHessian(model.parameters(), lr=0.05)
    step = take_steps(model, optimizer, 2, closure_kind="loss")
    params, layout = layout_of(model)
    P = preconditioner_of(optimizer, params, layout)
    expected = -0.05 * P.inverse.matvec(first_moment(optimizer, params, 0.9))
    torch.testing.assert_close(step, expected, rtol=1e-12, atol=1e-15)


def test_sophia_preconditioner_gives_its_clipped_step():
    from hesskit.optim.diagonal.sophia import Sophia

    model = small_model()
    X, y = batch()
    optimizer = Sophia(model.parameters(), lr=0.01, weight_decay=0.0, interval=1, rho=0.5,
                       curvature=lambda: Problem(model, nn.MSELoss(), (X, y)))
    step = take_steps(model, optimizer, 3)
    params, layout = layout_of(model)
    P = preconditioner_of(optimizer, params, layout)
    m = torch.cat([optimizer.state[p]["exp_avg"].reshape(-1) for p in params])
    ratio = P.inverse.matvec(m)
    assert bool((ratio.abs() < 1).any()) and bool((ratio.abs() > 1).any())  # both regimes
    torch.testing.assert_close(step, -0.01 * ratio.clamp(-1, 1), rtol=1e-12, atol=1e-15)


class Scaled(nn.Module):
    """A Linear layer K-FAC covers and a scale it does not."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.gain = nn.Parameter(torch.tensor([1.5]))

    def forward(self, x):
        return self.linear(x) * self.gain


def test_kfac_preconditioner_equals_its_kronecker_factors_with_factored_damping():
    torch.manual_seed(0)
    model = Scaled().double()
    X, y = batch()
    optimizer = KFAC(model.parameters(), model=model, loss=nn.MSELoss())
    optimizer_closure = batch_closure(optimizer, X, y)
    params, layout = layout_of(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step(optimizer_closure)
    P = preconditioner_of(optimizer, params, layout)
    state = optimizer.kfac_state
    factors, gamma = state["factors"]["linear.weight"], float(state["gamma"])
    pi = math.sqrt((float(factors.A.trace()) / 4) / (float(factors.G.trace()) / 2))
    A = factors.A + pi * gamma * torch.eye(4, dtype=torch.float64)
    G = factors.G + gamma / pi * torch.eye(2, dtype=torch.float64)
    # the K-FAC operator's dense matrix from the factors, in vec([W b]) row-major order, to
    # the flat layout (the gain, its own parameter, first; then W row-major and b):
    # vec(G V A) = (G ⊗ A) vec(V)
    assert layout.names == ("gain", "linear.weight", "linear.bias")
    joined = torch.kron(G, A)
    order = [o * 4 + i for o in range(2) for i in range(3)] + [o * 4 + 3 for o in range(2)]
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[1:, 1:] = joined[order][:, order]
    expected[0, 0] = gamma**2
    torch.testing.assert_close(P.matrix.to_dense(), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(P.inverse.to_dense(), torch.linalg.inv(expected), rtol=1e-9,
                               atol=1e-12)
    # its first step is α Δ with Δ = −P⁻¹∇h (μ = 0 without a previous update)
    gradient = Problem(model, nn.MSELoss(), (X, y)).gradient(before)
    step = torch.cat([(p.detach() - before[n]).reshape(-1)
                      for n, p in model.named_parameters()])
    torch.testing.assert_close(step, -float(state["last_alpha"]) * P.inverse.matvec(gradient),
                               rtol=1e-10, atol=1e-14)


def test_shampoo_operator_preconditioner_gives_the_ungrafted_step_in_any_group_order():
    from hesskit.optim.shampoo.optimizer import Shampoo

    model = small_model()
    params = list(model.parameters())
    optimizer = Shampoo([{"params": params[2:]}, {"params": params[:2]}], lr=0.01,
                        graft="none", update_freq=1, start_preconditioning_step=1)
    step = take_steps(model, optimizer, 2)
    params, layout = layout_of(model)
    P = preconditioner_of(optimizer, params, layout)
    assert P.block_diagonal
    torch.testing.assert_close(step, -0.01 * P.inverse.matvec(
        first_moment(optimizer, params, 0.9)), rtol=1e-9, atol=1e-13)


def test_a_coupling_preconditioner_refuses_the_per_layer_blocks():
    layout = ParameterLayout(("a", "b"), (torch.Size([3]), torch.Size([3])))
    P = matrix_preconditioner(spd(6, 8), layout)
    assert not P.block_diagonal
    with pytest.raises(InvalidArgumentError, match="couples different parameters"):
        P.block(["a"])
    diagonal = matrix_preconditioner(torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64)),
                                     layout)
    assert diagonal.block_diagonal and diagonal.block(["b"]).matrix.to_dense()[0, 0] == 4


def test_optimizers_without_an_adapter_or_state_are_refused():
    model = small_model()
    params, layout = layout_of(model)
    with pytest.raises(InvalidArgumentError, match="no preconditioner adapter for LBFGS"):
        preconditioner_of(torch.optim.LBFGS(params), params, layout)
    with pytest.raises(InvalidArgumentError, match="no state"):
        preconditioner_of(torch.optim.Adam(params), params, layout)


@dataclass
class TinyProblem:
    name: str
    model: nn.Module
    loss: nn.Module
    train: tuple[torch.Tensor, torch.Tensor]
    weight_decay: float = 0.01


def test_the_analysis_measures_the_batch_objective_and_restores_the_model():
    model = small_model()
    problem = TinyProblem("tiny", model, nn.MSELoss(), batch(n=24))
    initial = [p.detach().clone() for p in model.parameters()]
    settings = AnalysisSettings(damping=LAM, top_k=3, tol=1e-10, max_products=50,
                                cg_rtol=1e-12, cg_maxiter=100)
    analysis = preconditioner_analysis(problem, ["sgd", "adam"], steps=3, every=2,
                                       batch_size=8, settings=settings)
    for p, q in zip(model.parameters(), initial, strict=True):
        assert torch.equal(p, q)
    sgd, adam = analysis.runs
    assert [r.step for r in sgd.records] == [2, 3]
    assert analysis.layers == [MODEL, "0", "2"]
    assert sgd.kind == "identity" and adam.kind == "diagonal"
    # SGD's first record (step 2) against G + wd·I of step 2's batch at the parameters
    # after step 1, built densely here: step 1 redone as the registry's SGD takes it
    from hesskit.training.batch_sampler import BatchSampler

    sampler = BatchSampler(24, 8, 0)
    first, second = sampler.next(), sampler.next()
    X, y = problem.train
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    optimizer.zero_grad()
    objective = nn.MSELoss()(model(X[first]), y[first]) + 0.005 * sum(
        p.square().sum() for p in model.parameters())
    objective.backward()
    optimizer.step()
    G = autograd_gauss_newton(model, nn.MSELoss(), X[second], y[second])
    values = torch.linalg.eigvalsh(G + 0.01 * torch.eye(26, dtype=torch.float64))
    scope = sgd.records[0].scope(MODEL)
    assert scope.curvature.top == pytest.approx(values.flip(0)[:3].tolist(), rel=1e-8)
    assert scope.curvature.condition_damped == pytest.approx(
        float((values[-1] + LAM) / (values[0] + LAM)), rel=1e-6)
    text = json.dumps(analysis.to_json(), allow_nan=False)
    again = PreconditionerAnalysis.from_json(json.loads(text))
    assert again.to_json() == json.loads(text)
    assert adam.records[-1].scope("0").diagonals[0].diagonal == "|diag H|"


def test_layers_are_the_modules_of_the_parameters():
    layout = ParameterLayout(("0.weight", "0.bias", "scale", "block.1.weight"),
                             (torch.Size([2, 2]), torch.Size([2]), torch.Size([1]),
                              torch.Size([3])))
    assert layer_groups(layout) == [("0", ["0.weight", "0.bias"]), ("scale", ["scale"]),
                                    ("block.1", ["block.1.weight"])]


def test_a_shampoo_run_inside_its_warmup_is_reported_as_its_graft():
    """The registry's Shampoo starts preconditioning at step 100; 3 steps are Adam's and the
    summary says so; a Shampoo that starts at step 2 has no such note."""
    from hesskit.analysis.preconditioner_records import summarize
    from hesskit.optim.shampoo.optimizer import Shampoo

    problem = TinyProblem("tiny", small_model(), nn.MSELoss(), batch(n=24))
    settings = AnalysisSettings(damping=LAM, top_k=2, max_products=20, cg_maxiter=20,
                                per_layer=False)
    early = OptimizerChoice("early", "Shampoo from step 2", lambda context: Shampoo(
        context.model.parameters(), lr=1e-3, start_preconditioning_step=2), 1e-3)
    analysis = preconditioner_analysis(problem, ["shampoo", early], steps=3, every=3,
                                       batch_size=8, settings=settings)
    registry, started = analysis.runs
    assert "ran 3 steps, all in its warm-up (steps 1-99" in registry.note
    assert started.note == ""
    lines = summarize(analysis)
    assert sum("all in its warm-up" in line for line in lines) == 1
    again = PreconditionerAnalysis.from_json(json.loads(json.dumps(analysis.to_json())))
    assert again.runs[0].note == registry.note
