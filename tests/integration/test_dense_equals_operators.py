"""The dense matrices of ``hesskit.dense`` equal the matrix-free operators applied to I.

Two independent code paths (dense builders and the operators' products) must agree to
rounding in float64, on one batch and on uneven batches, for several activations and losses.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hesskit.dense import hessian_of
from hesskit.models import mlp
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem

CASES = [
    ("relu", nn.CrossEntropyLoss()),
    ("tanh", nn.MSELoss()),
    ("softplus", nn.BCEWithLogitsLoss()),
    ("leaky_relu", nn.MSELoss(reduction="sum")),
]


def _problem(activation: str, loss: nn.Module, uneven: bool) -> Problem:
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(3)
    model = mlp([4, 5, 3, 3], activation).double()
    X = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    if isinstance(loss, nn.CrossEntropyLoss):
        y = torch.randint(0, 3, (9,), generator=generator)
    elif isinstance(loss, nn.BCEWithLogitsLoss):
        y = torch.rand(9, 3, generator=generator, dtype=torch.float64)
    else:
        y = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    data = [(X[:5], y[:5]), (X[5:], y[5:])] if uneven else (X, y)
    return Problem(model, loss, data)


@pytest.mark.parametrize("uneven", [False, True], ids=["one-batch", "uneven-batches"])
@pytest.mark.parametrize(("activation", "loss"), CASES, ids=[c[0] for c in CASES])
def test_dense_hessian_and_gauss_newton_equal_the_operators_applied_to_identity(
    activation: str, loss: nn.Module, uneven: bool
) -> None:
    problem = _problem(activation, loss, uneven)
    dense = hessian_of(problem)
    H_op = hessian_operator(problem).to_dense()
    G_op = gauss_newton_operator(problem).to_dense()
    scale = H_op.abs().max().item()
    torch.testing.assert_close(dense.matrix("H"), H_op, atol=1e-10 * scale, rtol=0)
    torch.testing.assert_close(dense.matrix("G"), G_op, atol=1e-10 * scale, rtol=0)
    torch.testing.assert_close(dense.matrix("R"), H_op - G_op, atol=1e-10 * scale, rtol=0)
