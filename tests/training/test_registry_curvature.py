"""The registry entries of the curvature-estimating optimizers (kfac, sophia, sophia-h,
adahessian, shampoo): each trains through the loop, is charged for its work, and resumes
exactly."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from hesskit.optim.sampling import draw_without_replacement
from hesskit.training.loop import Budget, TrainConfig, objective, train
from hesskit.training.optimizers import REGISTRY, OptimizerContext

NAMES = ("kfac", "sophia", "sophia-h", "adahessian", "shampoo")


@dataclass
class ToyProblem:
    """A 3-6-2 tanh regression with weight decay; error = mean squared error."""

    name: str
    model: nn.Module
    loss: nn.Module
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    weight_decay: float

    @staticmethod
    def error_fn(model: nn.Module, X: Tensor, y: Tensor) -> float:
        return float(((model(X) - y) ** 2).sum(dim=1).mean())


def toy_problem(num_train: int = 48) -> ToyProblem:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(num_train + 10, 3, generator=generator, dtype=torch.float64)
    y = torch.stack([X[:, 0] * X[:, 1], torch.sin(X[:, 2])], dim=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    return ToyProblem("toy", model, nn.MSELoss(), (X[:num_train], y[:num_train]),
                      (X[num_train:], y[num_train:]), weight_decay=1e-3)


def _params(problem: ToyProblem) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in problem.model.parameters()])


def test_the_five_methods_are_registered_and_available():
    for name in NAMES:
        assert REGISTRY[name].available, name
    assert REGISTRY["kfac"].lr_grid == (1.0,) and REGISTRY["kfac"].full_batch
    assert REGISTRY["adahessian"].takes_loss_closure
    assert REGISTRY["adahessian"].default_lr == 0.15  # the authors' default
    for name in ("sophia", "sophia-h", "adahessian", "shampoo"):
        grid = REGISTRY[name].lr_grid
        assert len(grid) == 5 and REGISTRY[name].default_lr is not None
        assert grid[0] <= REGISTRY[name].default_lr <= grid[-1]


@pytest.mark.parametrize("name", NAMES)
def test_each_method_trains_through_the_loop_and_is_charged_beyond_its_gradients(name):
    problem = toy_problem()
    # AdaHessian's first step is lr·g/|z⊙Hz|: one noisy probe makes it long on this toy
    lr = 1e-3 if name == "adahessian" else None
    config = TrainConfig(name, lr=lr, batch_size=16, eval_every=100)
    result = train(problem, config, Budget(iterations=8), progress=False)
    assert not result.diverged
    first, last = result.records[0].train_error, result.records[-1].train_error
    assert last < first
    epochs = result.records[-1].epochs
    if name == "shampoo":
        assert epochs == pytest.approx(8 * 16 / 48)  # one closure a step, nothing more
    elif name == "kfac":
        assert epochs > 8 * 3 * 16 / 48  # gradient, 2 products (and statistics, ρ)
    else:
        assert epochs > 8 * 16 / 48  # the closures plus the estimates' products


def test_kfac_reports_the_objective_and_its_damping_and_charges_its_cases():
    problem = toy_problem()
    start = objective(problem, *problem.train).item()
    result = train(problem, TrainConfig("kfac", eval_every=100), Budget(iterations=5),
                   progress=False)
    first = result.records[1]
    # 48 cases < m₁ = 1000: every K-FAC batch is the whole training set
    assert first.loss == pytest.approx(start, rel=1e-12)
    # λ₀ = 150, changed by the Levenberg-Marquardt rule at step T₁ = 5 only
    assert [r.damping for r in result.records[1:5]] == [150.0] * 4
    assert result.records[5].damping != 150.0
    # each full-batch step: gradient 1, statistics ⌈48/8⌉/48, products 2 (γ steps 4), ρ 1
    cases = 5 * (48 + 6 + 2 * 48) + 48  # ρ at step 5
    unit = 5  # the curvature batch: ⌈0.1 · 48⌉
    assert result.records[-1].epochs == pytest.approx((cases // unit) * unit / 48)


@pytest.mark.parametrize("name", ["kfac", "sophia", "adahessian", "shampoo"])
def test_resume_is_bit_identical(name, tmp_path):
    config = TrainConfig(name, batch_size=16, checkpoint_every=3, eval_every=100)
    whole = toy_problem()
    train(whole, config, Budget(iterations=6), progress=False)
    part = toy_problem()
    train(part, config, Budget(iterations=3), out_dir=tmp_path, progress=False)
    resumed = toy_problem()
    train(resumed, config, Budget(iterations=6), out_dir=tmp_path, resume=True,
          progress=False)
    assert torch.equal(_params(resumed), _params(whole))


def test_the_objective_carries_the_weight_cost_so_built_methods_have_no_decay_of_their_own():
    problem = toy_problem()
    context = OptimizerContext(problem.model, problem.loss, problem.weight_decay, 1e-3,
                               lambda: problem.train, lambda: problem.train)
    for name in ("sophia", "adahessian", "shampoo"):
        optimizer = REGISTRY[name].build(context)
        assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups), name
    kfac = REGISTRY["kfac"].build(context)
    assert all(g["weight_decay"] == problem.weight_decay for g in kfac.param_groups)


def test_draws_are_without_replacement_until_the_permutation_runs_out():
    state = {"sampler_generator": torch.Generator().manual_seed(3).get_state(),
             "sampler_permutation": torch.arange(0), "sampler_cursor": 0}
    draws = [draw_without_replacement(state, 10, 3) for _ in range(3)]
    assert len(set(torch.cat(draws).tolist())) == 9
    fourth = draw_without_replacement(state, 10, 3)  # 1 left < 3: a fresh permutation
    assert int(state["sampler_cursor"]) == 3 and len(set(fourth.tolist())) == 3
    assert torch.equal(draw_without_replacement(state, 10, 12), torch.arange(10))
