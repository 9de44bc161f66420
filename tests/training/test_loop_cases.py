"""The training loop's epochs count every case a second-order method sends through the model:
stochastic HF's own tally (gradient, trials, curvature products, ρ's chunk losses), and
Hessian-free's preconditioner pass only where it really is a separate pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hesskit.estimators.gradient_squares as gradient_squares
from hesskit.training.budget import Budget
from hesskit.training.loop import TrainConfig, _Run, train

DTYPE = torch.float64
NUM_DATA = 300


class Regression:
    """A 3-8-2 tanh network on y = (x₀x₁, sin x₂) with a weight cost, float64."""

    name = "toy"
    weight_decay = 1e-3

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        X = torch.randn(NUM_DATA, 3, generator=generator, dtype=DTYPE)
        y = torch.stack([X[:, 0] * X[:, 1], torch.sin(X[:, 2])], dim=1)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to(DTYPE)
        self.loss = nn.MSELoss()
        self.train = self.test = (X, y)

    @staticmethod
    def error_fn(model, X, y) -> float:
        with torch.no_grad():
            return float(((model(X) - y) ** 2).sum(dim=1).mean())


def test_stochastic_hf_epochs_are_its_own_case_count_to_within_one_curvature_batch():
    run = _Run(Regression(), TrainConfig("shf"), None)
    run.start()
    for _ in range(6):
        run.step()
    state = run.optimizer.hf_state
    unit = run.curvature_size  # ⌈0.1 · 300⌉ = 30 cases per charged unit
    assert unit == 30
    _, _, epochs = run.used()
    cases = int(state["cases"])
    assert cases - unit < epochs * NUM_DATA <= cases
    # the tally holds more than the gradient batches: curvature products and ρ's losses
    gradient_cases = sum(min(NUM_DATA, -(-128 * 1012**k // 1000**k)) for k in range(6))
    assert cases > gradient_cases + state["curvature_products"] * 13


@pytest.mark.parametrize("steps", [3])
def test_hessian_free_charges_the_preconditioner_pass_only_when_it_is_one(monkeypatch, steps):
    hooked = train(Regression(), TrainConfig("hf", eval_every=steps), Budget(iterations=steps),
                   progress=False)
    monkeypatch.setattr(gradient_squares.GradientSquares, "empirical_fisher_diagonal",
                        lambda self: None)  # as if the pass were not proved: extra pass
    separate = train(Regression(), TrainConfig("hf", eval_every=steps),
                     Budget(iterations=steps), progress=False)
    a, b = hooked.records[-1], separate.records[-1]
    # same iterates (the statistic agrees to rounding), so the same CG products ...
    assert a.train_error == pytest.approx(b.train_error, rel=1e-9)
    numchunks = 10  # curvature batch 1/10 of the full batch
    # ... and exactly one pass over the gradient batch more per step for the separate pass
    assert b.products - a.products == steps * numchunks
    assert b.epochs - a.epochs == pytest.approx(steps * 1.0, rel=1e-12)
