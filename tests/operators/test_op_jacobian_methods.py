"""The traced J v (linearize, for convolutions) equals the double-vjp; untraceable models
fall back to the double-vjp."""

from __future__ import annotations

import pytest
import torch
from tests.reference import autograd_gauss_newton
from torch import nn

from hesskit.operators import gauss_newton_operator
from hesskit.operators.gauss_newton import OutputLinearization
from hesskit.problem import Problem


class ConvResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.inner = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 6 * 6, 2)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        return self.head((h + torch.relu(self.inner(h))).flatten(1))


class Branchy(nn.Module):
    """Data-dependent control flow: tracing cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv1d(1, 2, 3), nn.Linear(8, 2)

    def forward(self, x):
        h = self.conv(x).flatten(1)
        if float(h.detach().sum()) > 0:  # data-dependent control flow: not traceable
            h = torch.tanh(h)
        return self.head(h)


def _problem(model, shape):
    torch.manual_seed(0)
    model = model.double()
    X = torch.randn(5, *shape, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    return model, X, y, Problem(model, nn.MSELoss(), (X, y))


@pytest.mark.parametrize("jacobian", ["auto", "linearize", "double_vjp"])
def test_every_jacobian_method_gives_the_exact_gauss_newton_matrix(jacobian):
    model, X, y, problem = _problem(ConvResidual(), (1, 6, 6))
    G = autograd_gauss_newton(model, nn.functional.mse_loss, X, y)
    op = gauss_newton_operator(problem, jacobian=jacobian)
    eye = torch.eye(op.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op.matmat(eye), G, atol=1e-10, rtol=1e-9)
    expected = "double_vjp" if jacobian == "double_vjp" else "linearize"
    assert op.linearization(next(problem.batches())).method == expected


def test_an_untraceable_model_falls_back_to_the_double_vjp():
    model, X, y, problem = _problem(Branchy(), (1, 6))
    lin = OutputLinearization(problem, problem.parameters(), X, "linearize")
    assert lin.method == "double_vjp"
    G = autograd_gauss_newton(model, nn.functional.mse_loss, X, y)
    op = gauss_newton_operator(problem)
    torch.testing.assert_close(op.matmat(torch.eye(op.shape[0], dtype=torch.float64)), G,
                               atol=1e-10, rtol=1e-9)
