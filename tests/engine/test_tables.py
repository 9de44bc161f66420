"""A CNN is a chain for the exact diagonals only: the Hessian-vector product and the dense
blocks refuse it (their operators use torch.func and stay exact), and what is not a chain
(residual adds, tied convolutions, operations between modules) is refused in every table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hesskit.engine import Table, record_chain
from hesskit.errors import UnsupportedArchitectureError
from hesskit.estimators.exact_diagonal import gauss_newton_diagonal, hessian_diagonal
from hesskit.operators.hessian import HessianMethod, hessian_operator
from hesskit.problem import Problem
from reference import autograd_gauss_newton, autograd_hessian

TOL = 1e-10


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)
    ).double()


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.act = nn.ReLU()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):
        return self.head(self.flatten(x + self.act(self.conv(x))))


class TwiceCalledConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.act = nn.Tanh()
        self.flatten = nn.Flatten()

    def forward(self, x):
        return self.flatten(self.conv(self.act(self.conv(x))))


class FunctionalInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.flatten = nn.Flatten()

    def forward(self, x):
        return self.flatten(nn.functional.relu(self.conv(x), inplace=True))


def tied_convolutions() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3))
    model[2].weight = model[0].weight
    return model


REFUSED = {
    "residual add": (ResidualCNN, "residual connection"),
    "conv called twice": (TwiceCalledConv, "called twice"),
    "tied conv weights": (tied_convolutions, "tied weights"),
    "functional relu in place": (FunctionalInPlace, "'relu' outside"),
    "grouped conv": (lambda: nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), "groups=2"),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(2, 1, 1)), "Conv3d"),
    "pool with indices": (
        lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.MaxPool2d(2, return_indices=True)),
        "indices",
    ),
    "batch norm": (lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)), "BatchNorm2d"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_what_is_not_a_cnn_chain_is_refused_in_the_diagonal_table(name):
    factory, reason = REFUSED[name]
    model = factory().double().eval()
    with pytest.raises(UnsupportedArchitectureError, match=reason):
        record_chain(model, torch.randn(3, 2, 4, 4, dtype=torch.float64), table=Table.DIAGONAL)


def test_a_conv_on_an_unbatched_input_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 2, 1)).double()
    with pytest.raises(UnsupportedArchitectureError, match=r"\[n, C, \*spatial\]"):
        record_chain(model, torch.randn(3, 4, 4, dtype=torch.float64), table=Table.DIAGONAL)


def test_the_product_table_refuses_convolutions_and_pooling():
    with pytest.raises(UnsupportedArchitectureError, match=r"not an nn\.Linear"):
        record_chain(small_cnn(), torch.randn(3, 1, 6, 6, dtype=torch.float64))
    pooled = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(9, 2)).double()
    with pytest.raises(UnsupportedArchitectureError, match="exact diagonals only"):
        record_chain(pooled, torch.randn(3, 1, 6, 6, dtype=torch.float64))


def test_a_cnn_chain_says_which_table_it_is_in():
    X = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    chain = record_chain(small_cnn(), X, table=Table.DIAGONAL)
    assert chain.table is Table.DIAGONAL and not chain.flat
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 2)).double()
    assert record_chain(mlp, X, table=Table.DIAGONAL).flat


def test_hessian_operator_of_a_cnn_takes_torch_func_and_is_exact():
    torch.manual_seed(0)
    model = small_cnn()
    X, y = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    problem = Problem(model, nn.CrossEntropyLoss(), [(X[:3], y[:3]), (X[3:], y[3:])])
    H = autograd_hessian(model, nn.functional.cross_entropy, X, y)
    op = hessian_operator(problem)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op @ v, H @ v, atol=TOL, rtol=0)
    assert op.method is HessianMethod.TORCH_FUNC
    torch.testing.assert_close(op.to_dense(), H, atol=TOL, rtol=0)
    torch.testing.assert_close(op.diagonal(), H.diagonal(), atol=TOL, rtol=0)


def test_residual_cnn_has_no_exact_hessian_diagonal_but_an_exact_gauss_newton_one():
    torch.manual_seed(1)
    model = ResidualCNN().double()
    X, y = torch.randn(4, 2, 4, 4, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(), (X, y))
    with pytest.raises(UnsupportedArchitectureError, match="residual connection"):
        hessian_diagonal(problem)
    G = autograd_gauss_newton(model, nn.functional.mse_loss, X, y).diagonal()
    torch.testing.assert_close(gauss_newton_diagonal(problem), G, atol=TOL, rtol=0)
