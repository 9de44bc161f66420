"""Exact diagonals of CNN chains (diagonal table) against torch.autograd, in float64.

References: the diagonal of ``torch.autograd.functional.hessian`` of the flat-parameter
loss, of Jᵀ H_ℓ J from the full output Jacobian, and Σ_i c g_i² from per-sample gradients
of torch's own losses (``tests/reference.py``). Tolerance 1e-10 (float64 arithmetic).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hesskit.engine import Table, chain_diagonal, map_curvature, primal_pass, problem_chain
from hesskit.estimators.exact_diagonal import (
    empirical_fisher_diagonal,
    gauss_newton_diagonal,
    hessian_diagonal,
)
from hesskit.problem import Problem
from reference import autograd_gauss_newton, autograd_hessian, per_sample_gradients

TOL = 1e-10
F = nn.functional


def relu_maxpool():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16, 3),
    ), (2, 6, 6), "ce"


def tanh_avgpool_strided():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=2, dilation=2), nn.Tanh(),
        nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Linear(27, 4), nn.Tanh(), nn.Linear(4, 2),
    ), (1, 7, 7), "mse"


def silu_conv1d_without_bias():
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1, bias=False), nn.SiLU(),
        nn.MaxPool1d(3, stride=2, padding=1), nn.Conv1d(3, 2, 2, stride=2), nn.SiLU(),
        nn.Flatten(), nn.Linear(4, 3),
    ), (2, 9), "ce"


def pads_and_adaptive_pooling():
    return nn.Sequential(
        nn.ZeroPad2d(1), nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.ConstantPad2d((0, 1, 1, 0), 0.5),
        nn.MaxPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(8, 2), nn.Softplus(),
    ), (1, 5, 5), "mse"


def same_and_reflect_padding():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding="same", padding_mode="reflect"), nn.GELU(),
        nn.Conv2d(2, 2, (2, 3), padding="same"), nn.Tanh(), nn.Flatten(), nn.Linear(32, 2),
    ), (1, 4, 4), "bce"


def overlapping_maxpool_in_place_relu():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=1), nn.Identity(),
        nn.Flatten(), nn.Linear(8, 2),
    ), (1, 6, 6), "ce"


CASES = {f.__name__: f for f in (
    relu_maxpool, tanh_avgpool_strided, silu_conv1d_without_bias, pads_and_adaptive_pooling,
    same_and_reflect_padding, overlapping_maxpool_in_place_relu,
)}
LOSSES = {
    "ce": (nn.CrossEntropyLoss, F.cross_entropy),
    "mse": (nn.MSELoss, F.mse_loss),
    "bce": (nn.BCEWithLogitsLoss, F.binary_cross_entropy_with_logits),
}
SIZES = (3, 2, 4)  # several batches


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model, shape, loss = CASES[name]()
    model = model.double().eval()
    n = sum(SIZES)
    X = torch.randn(n, *shape, dtype=torch.float64)
    k = model(X).shape[1]
    if loss == "ce":
        y = torch.randint(0, k, (n,))
    elif loss == "bce":
        y = torch.rand(n, k, dtype=torch.float64)
    else:
        y = torch.randn(n, k, dtype=torch.float64)
    return model, X, y, loss


def batches(X, y):
    out, start = [], 0
    for size in SIZES:
        out.append((X[start : start + size], y[start : start + size]))
        start += size
    return out


def empirical_fisher_reference(model, loss, X, y, names=None):
    functional = LOSSES[loss][1]
    k = model(X[:1]).shape[1]
    c = 1 / len(X) if loss == "ce" else 1 / (len(X) * k)
    grads = per_sample_gradients(
        model, lambda z, t: functional(z, t, reduction="sum"), X, y, names
    )
    return c * (grads**2).sum(0)


def engine_diagonal(problem: Problem, kind: str) -> torch.Tensor:
    """The engine's own loop over batches with the diagonal table (no operator layer)."""
    params = problem.parameters()
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for batch in problem.batches():
        chain = problem_chain(problem, params, batch.inputs, table=Table.DIAGONAL)
        primal = primal_pass(chain, problem.loss, batch.targets, params)
        for name, part in chain_diagonal(primal, problem.loss, batch.targets, kind).items():
            total[name] += batch.weight * part
    return problem.layout.flatten(total)


def references(model, X, y, loss, names=None):
    functional = LOSSES[loss][1]
    return {
        "hessian": autograd_hessian(model, functional, X, y, names).diagonal(),
        "ggn": autograd_gauss_newton(model, functional, X, y, names).diagonal(),
        "ef": empirical_fisher_reference(model, loss, X, y, names),
    }


@pytest.mark.parametrize("name", CASES)
def test_engine_diagonals_of_cnn_chains_equal_autograd(name):
    model, X, y, loss = build(name)
    problem = Problem(model, LOSSES[loss][0](), batches(X, y))
    expected = references(model, X, y, loss)
    for kind, reference in expected.items():
        torch.testing.assert_close(engine_diagonal(problem, kind), reference, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["relu_maxpool", "tanh_avgpool_strided",
                                  "silu_conv1d_without_bias"])
def test_exact_diagonal_front_door_on_cnns_equals_autograd(name):
    model, X, y, loss = build(name, seed=1)
    problem = Problem(model, LOSSES[loss][0](), batches(X, y))
    expected = references(model, X, y, loss)
    torch.testing.assert_close(hessian_diagonal(problem), expected["hessian"], atol=TOL, rtol=0)
    torch.testing.assert_close(gauss_newton_diagonal(problem, use_chain=True), expected["ggn"],
                               atol=TOL, rtol=0)
    torch.testing.assert_close(empirical_fisher_diagonal(problem, use_chain=True),
                               expected["ef"], atol=TOL, rtol=0)


def test_a_parameter_subset_starting_in_the_middle_of_a_cnn_is_exact():
    model, X, y, loss = build("silu_conv1d_without_bias", seed=2)
    names = ["3.weight", "6.bias"]  # the first convolution is not differentiated
    problem = Problem(model, LOSSES[loss][0](), batches(X, y), params=names)
    expected = references(model, X, y, loss, names)
    torch.testing.assert_close(engine_diagonal(problem, "hessian"), expected["hessian"],
                               atol=TOL, rtol=0)
    torch.testing.assert_close(hessian_diagonal(problem), expected["hessian"], atol=TOL, rtol=0)
    torch.testing.assert_close(engine_diagonal(problem, "ggn"), expected["ggn"], atol=TOL, rtol=0)


def test_chunks_of_one_sample_give_the_same_diagonal(monkeypatch):
    model, X, y, loss = build("tanh_avgpool_strided", seed=3)
    problem = Problem(model, LOSSES[loss][0](), (X, y))
    whole = engine_diagonal(problem, "hessian")
    monkeypatch.setattr(map_curvature, "ELEMENT_BUDGET", 1)
    torch.testing.assert_close(engine_diagonal(problem, "hessian"), whole, atol=TOL, rtol=0)
