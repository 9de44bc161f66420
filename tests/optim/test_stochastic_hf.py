"""Stochastic Hessian-free: the batch schedule, the curvature batch, descent, exact resume."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from hesskit.errors import InvalidArgumentError
from hesskit.optim.hessian_free.stochastic import (
    SHF_BATCH_GROWTH,
    SHF_CURVATURE_FRACTION,
    SHF_INITIAL_BATCH,
    BatchGrowth,
    StochasticHessianFree,
)
from hesskit.training.loop import Budget, TrainConfig, train

DTYPE = torch.float64
NUM_DATA = 60
WD = 1e-3


def regression(seed: int = 0):
    """A 3-5-2 tanh network on y = (x₀x₁, sin x₂): non-convex, cheap, float64."""
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(NUM_DATA, 3, generator=generator, dtype=DTYPE)
    y = torch.stack([X[:, 0] * X[:, 1], torch.sin(X[:, 2])], dim=1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DTYPE)
    return model, nn.MSELoss(), (X, y)


def full_objective(model, loss, data) -> float:
    """F = ℓ on all the data + (wd/2)‖θ‖², computed here independently of the optimizer."""
    with torch.no_grad():
        squares = sum(float(p.square().sum()) for p in model.parameters())
        return float(loss(model(data[0]), data[1])) + 0.5 * WD * squares


class Recording(StochasticHessianFree):
    """Records the gradient batch and the curvature batch each step builds G on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _curvature(self):
        self.seen.append((self._batch[0].clone(), self._curvature_batch[0].clone()))
        return super()._curvature()


def test_batch_schedule_is_the_documented_geometric_growth_capped_at_the_data():
    schedule = BatchGrowth(initial=10, growth=1.3)
    sizes = [schedule.size(k, 60) for k in range(1, 12)]
    expected = [min(60, math.ceil(10 * 1.3 ** (k - 1) - 1e-9)) for k in range(1, 12)]
    assert sizes == expected == [10, 13, 17, 22, 29, 38, 49, 60, 60, 60, 60]
    assert BatchGrowth(10, 2.0, maximum=30).size(5, 60) == 30
    assert BatchGrowth(10, 1.0).size(10_000, 60) == 10  # γ = 1: a fixed mini-batch
    assert BatchGrowth().size(10**6, 1438) == 1438  # no overflow far past the cap
    # the defaults: 128 cases growing 1.2% a step
    default = BatchGrowth()
    assert (default.initial, default.growth) == (SHF_INITIAL_BATCH, SHF_BATCH_GROWTH)
    assert (SHF_INITIAL_BATCH, SHF_BATCH_GROWTH) == (128, 1.012)
    assert default.size(71, 10**6) == math.ceil(128 * 1.012**70)


def test_batch_schedule_refuses_shrinking_or_empty_batches():
    with pytest.raises(InvalidArgumentError, match="may only grow"):
        BatchGrowth(10, 0.9)
    with pytest.raises(InvalidArgumentError, match="initial"):
        BatchGrowth(0, 1.1)
    with pytest.raises(InvalidArgumentError, match="maximum"):
        BatchGrowth(10, 1.1, maximum=5)


def test_each_step_uses_the_scheduled_batch_and_curvature_on_its_first_tenth():
    model, loss, data = regression()
    schedule = BatchGrowth(initial=10, growth=1.3)
    optimizer = Recording(model, loss, data, batches=schedule, weight_decay=WD)
    for k in range(1, 7):
        optimizer.step()
        size = schedule.size(k, NUM_DATA)
        curvature = math.ceil(SHF_CURVATURE_FRACTION * size)
        batch, curvature_batch = optimizer.seen[-1]
        assert optimizer.hf_state["batch_size"] == batch.shape[0] == size
        assert optimizer.hf_state["curvature_size"] == curvature_batch.shape[0] == curvature
        assert torch.equal(curvature_batch, batch[:curvature])  # a subset of THIS batch
        rows = {tuple(row.tolist()) for row in data[0]}
        assert all(tuple(row.tolist()) in rows for row in batch)  # cases of the data
        assert len({tuple(row.tolist()) for row in batch}) == size  # without replacement


def test_curvature_fraction_outside_zero_one_is_refused():
    model, loss, data = regression()
    with pytest.raises(InvalidArgumentError, match="curvature_fraction"):
        StochasticHessianFree(model, loss, data, curvature_fraction=0.0)


def test_a_few_steps_lower_the_full_objective():
    model, loss, data = regression()
    optimizer = StochasticHessianFree(model, loss, data, batches=BatchGrowth(20, 1.2),
                                      weight_decay=WD)
    before = full_objective(model, loss, data)
    for _ in range(8):
        optimizer.step()
    after = full_objective(model, loss, data)
    assert after < 0.8 * before, (before, after)
    assert optimizer.hf_state["accepted_steps"] >= 4
    assert optimizer.hf_state["cases"] > 8 * 20  # at least one gradient per step counted


def test_step_returns_the_batch_objective_at_the_start_of_the_step():
    model, loss, data = regression()
    optimizer = StochasticHessianFree(model, loss, data, batches=BatchGrowth(NUM_DATA, 1.0),
                                      weight_decay=WD)
    expected = full_objective(model, loss, data)  # the batch is all the data here
    value = optimizer.step()
    assert isinstance(value, torch.Tensor) and value.dim() == 0
    assert float(value) == pytest.approx(expected, rel=1e-12)


def test_a_closure_is_refused_with_a_remedy():
    model, loss, data = regression()
    optimizer = StochasticHessianFree(model, loss, data)
    with pytest.raises(InvalidArgumentError, match="without a closure"):
        optimizer.step(lambda: loss(model(data[0]), data[1]))


@pytest.mark.parametrize("preconditioner", [False, True])
def test_state_dict_round_trip_resumes_bit_identically(preconditioner):
    """Run 3 steps, copy model and optimizer state into fresh objects, run 4 more on both:
    parameters, λ and the batches drawn agree to the last bit."""
    model, loss, data = regression()
    schedule = BatchGrowth(initial=8, growth=1.2)
    kwargs = {"batches": schedule, "weight_decay": WD, "seed": 3,
              "preconditioner": preconditioner}
    optimizer = StochasticHessianFree(model, loss, data, **kwargs)
    for _ in range(3):
        optimizer.step()
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(optimizer.state_dict())
    assert {"batch_size", "cases", "sampler_generator", "sampler_permutation",
            "sampler_cursor", "damping", "warm_start"} <= set(saved["hessian_free"])

    twin, _, _ = regression(seed=1)  # other initial weights, overwritten by the load
    twin.load_state_dict(saved_model)
    resumed = StochasticHessianFree(twin, loss, data, **{**kwargs, "seed": 99})
    resumed.load_state_dict(saved)
    for _ in range(4):
        optimizer.step()
        resumed.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert optimizer.hf_state["damping"] == resumed.hf_state["damping"]
    assert optimizer.hf_state["cases"] == resumed.hf_state["cases"]
    assert torch.equal(optimizer.hf_state["sampler_permutation"],
                       resumed.hf_state["sampler_permutation"])


class ToyProblem:
    """What the training loop needs: the regression with a weight cost and an error."""

    name = "toy"
    weight_decay = WD

    def __init__(self):
        self.model, self.loss, data = regression()
        self.train, self.test = data, data

    @staticmethod
    def error_fn(model, X, y) -> float:
        with torch.no_grad():
            return float(((model(X) - y) ** 2).sum(dim=1).mean())


def test_registry_name_shf_trains_and_charges_its_cases_as_epochs():
    problem = ToyProblem()
    result = train(problem, TrainConfig("shf", eval_every=5), Budget(iterations=5),
                   progress=False)
    first, last = result.records[0], result.records[-1]
    assert result.optimizer == "shf" and last.iteration == 5
    assert last.train_error < first.train_error
    # epochs are SHF's cases in units of the loop's curvature batch ceil(0.1 · 60) = 6
    assert last.epochs == pytest.approx(6 * last.products / NUM_DATA, rel=1e-12)
    # 60 < b₀: every batch is the whole data, at least one gradient of it a step, less the
    # remainder below one unit carried to the next step
    assert last.epochs >= 5 - 6 / NUM_DATA


def test_registry_shf_resumed_run_is_bit_identical(tmp_path):
    whole = ToyProblem()
    train(whole, TrainConfig("shf"), Budget(iterations=6), progress=False)
    part = ToyProblem()
    train(part, TrainConfig("shf"), Budget(iterations=3), out_dir=tmp_path, progress=False)
    part = ToyProblem()
    train(part, TrainConfig("shf"), Budget(iterations=6), out_dir=tmp_path, resume=True,
          progress=False)
    for a, b in zip(whole.model.parameters(), part.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_every_shf_constant_is_pinned():
    # hesskit's choices, documented in stochastic_hf.py (none is taken from Kiros 2013)
    from hesskit.optim.hessian_free.settings import HF_CG
    from hesskit.optim.hessian_free.stochastic import SHF_CG, SHF_MAX_CG_ITERATIONS

    assert (SHF_INITIAL_BATCH, SHF_BATCH_GROWTH) == (128, 1.012)
    assert SHF_CURVATURE_FRACTION == 0.1 and SHF_MAX_CG_ITERATIONS == 25
    # Martens' CG in every other respect (progress rule, kept iterates, warm start)
    assert dataclasses.replace(HF_CG, max_iterations=25) == SHF_CG
    assert math.ceil(math.log(2) / math.log(SHF_BATCH_GROWTH)) == 59  # doubling steps
