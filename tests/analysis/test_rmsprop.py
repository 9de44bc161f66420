"""RMSProp's √v against curvature diagonals: metrics by hand, and closed forms at a fixed point."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from hesskit.analysis.rmsprop import (
    ALL,
    RMSPropAnalysis,
    cosine,
    rmsprop_curvature_analysis,
    scale,
    spearman,
    summarize,
)
from hesskit.errors import InvalidArgumentError
from hesskit.problem import Problem
from hesskit.report.diagonal_plots import plot_rmsprop_analysis


def test_metrics_match_hand_computations():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    b = torch.tensor([2.0, 1.0, 8.0, 0.0], dtype=torch.float64)
    # ranks a: 1 2 3 4, b: 3 2 4 1 → d = (-2, 0, -1, 3), Σd² = 14, ρ = 1 − 6·14/(4·15) = −0.4
    assert spearman(a, b) == pytest.approx(-0.4, abs=1e-12)
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)
    # ⟨a, b⟩ = 2 + 2 + 24 + 0 = 28; ‖a‖ = √30, ‖b‖ = √69
    assert cosine(a, b) == pytest.approx(28 / math.sqrt(30 * 69), abs=1e-12)
    # ratios where b > 0: 0.5, 2, 0.375 → median 0.5
    assert scale(a, b) == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(scale(a, torch.zeros(4))) and math.isnan(cosine(a, torch.zeros(4)))
    assert math.isnan(spearman(a, torch.ones(4)))


def linear_single_sample(seed: int = 0) -> tuple[Problem, nn.Module]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    X = torch.randn(1, 3, dtype=torch.float64)
    y = torch.randn(1, 2, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), (X, y)), model


def test_square_avg_at_fixed_parameters_is_the_closed_form_multiple_of_the_empirical_fisher():
    # With lr = 0 the parameters stay put, so v_T = (1 − α^T) g² exactly. For one sample,
    # g = c g_1 and diag EF = c g_1², hence √v_T = √((1 − α^T) c) · √diag EF.
    problem, model = linear_single_sample()
    alpha, steps = 0.9, 30
    before = [p.detach().clone() for p in model.parameters()]
    analysis = rmsprop_curvature_analysis(problem, steps=steps, every=10, lr=0.0, alpha=alpha)
    c = 1 / 2  # MSE "mean" over k = 2 outputs of one sample
    expected_scale = math.sqrt((1 - alpha**steps) * c)
    final = analysis.final
    sqrt_v, sqrt_ef = np.array(final["sqrt v"]), np.array(final["sqrt diag EF"])
    np.testing.assert_allclose(sqrt_v, expected_scale * sqrt_ef, rtol=1e-12, atol=0)
    last = next(c for c in analysis.comparisons if c.step == steps and c.layer == ALL
            and c.diagonal == "sqrt diag EF")
    assert last.cosine == pytest.approx(1.0, abs=1e-12)
    assert last.spearman == pytest.approx(1.0, abs=1e-12)
    assert last.scale == pytest.approx(expected_scale, rel=1e-12)
    # the gradient by hand: ∇_W = 2c (Wx + b − y) xᵀ, ∇_b = 2c (Wx + b − y)
    (batch,), W, b = list(problem.batches()), before[0], before[1]
    X, y = batch.inputs, batch.targets
    residual = (X @ W.T + b - y)[0]
    grad = torch.cat([(2 * c * torch.outer(residual, X[0])).reshape(-1), 2 * c * residual])
    np.testing.assert_allclose(sqrt_v, math.sqrt(1 - alpha**steps) * grad.abs().numpy(),
                               rtol=1e-12)
    for p, p0 in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), p0)
    assert sorted({c.step for c in analysis.comparisons}) == [10, 20, 30]


def test_other_optimizers_get_the_same_g_squared_average_as_rmsprop():
    problem_a, _ = linear_single_sample(1)
    problem_b, _ = linear_single_sample(1)
    rms = rmsprop_curvature_analysis(problem_a, steps=5, every=5, lr=0.0, alpha=0.8)
    adam = rmsprop_curvature_analysis(
        problem_b, optimizer=lambda p: torch.optim.Adam(p, lr=0.0), steps=5, every=5, alpha=0.8
    )
    assert adam.optimizer == "Adam" and rms.optimizer == "RMSprop"
    np.testing.assert_allclose(adam.final["sqrt v"], rms.final["sqrt v"], rtol=1e-12)


def test_training_run_records_every_layer_round_trips_json_and_summarises_numbers(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    X = torch.randn(12, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    problem = Problem(model, nn.CrossEntropyLoss(), [(X[:6], y[:6]), (X[6:], y[6:])])
    analysis = rmsprop_curvature_analysis(problem, steps=7, every=3, lr=1e-2)
    assert sorted({c.step for c in analysis.comparisons}) == [3, 6, 7]
    layers = {c.layer for c in analysis.comparisons}
    assert layers == {ALL, "0.weight", "0.bias", "2.weight", "2.bias"}
    restored = RMSPropAnalysis.from_json(json.loads(json.dumps(analysis.to_json())))
    assert restored == analysis
    last = next(c for c in analysis.comparisons if c.step == 7 and c.layer == ALL
            and c.diagonal == "diag G")
    expected = spearmanr(analysis.final["sqrt v"], analysis.final["diag G"]).statistic
    assert last.spearman == pytest.approx(expected, abs=1e-12)
    text = "\n".join(summarize(analysis))
    sentence = "At step 7, over all parameters, √v against diag G: rank correlation"
    assert f"{sentence} {last.spearman:.2f}" in text
    assert "exact" in analysis.hessian_method
    path = plot_rmsprop_analysis(analysis, tmp_path / "figure.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_are_refused_in_one_sentence():
    problem, _ = linear_single_sample()
    with pytest.raises(InvalidArgumentError, match="must be at least 1"):
        rmsprop_curvature_analysis(problem, steps=0)
    with pytest.raises(InvalidArgumentError, match=r"alpha must be in \[0, 1\)"):
        rmsprop_curvature_analysis(problem, alpha=1.5)
