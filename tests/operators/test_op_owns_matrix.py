"""Every curvature operator owns its matrix: exact diagonal, trace, dense and blocks."""

from __future__ import annotations

import pytest
import torch
from tests.reference import autograd_gauss_newton, autograd_hessian, empirical_fisher
from torch import nn

from hesskit.errors import TooLargeError, UnsupportedArchitectureError
from hesskit.operators import (
    MatrixOperator,
    damped,
    empirical_fisher_operator,
    fisher_operator,
    gauss_newton_operator,
    hessian_operator,
)
from hesskit.problem import Problem

TOL = {"atol": 1e-10, "rtol": 1e-9}


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.out = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.inner(x)) + x)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


@pytest.fixture(params=["chain", "residual"])
def case(request):
    torch.manual_seed(0)
    model = (_mlp() if request.param == "chain" else Residual()).double()
    X, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    return request.param, model, X, y, Problem(model, nn.MSELoss(), (X, y))


def test_gauss_newton_and_empirical_fisher_diagonals_are_exact_on_any_model(case):
    _, model, X, y, problem = case
    G = autograd_gauss_newton(model, nn.functional.mse_loss, X, y)
    torch.testing.assert_close(gauss_newton_operator(problem).diagonal(), G.diagonal(), **TOL)
    assert gauss_newton_operator(problem).trace() == pytest.approx(float(G.trace()), rel=1e-10)
    EF = empirical_fisher(model, nn.MSELoss(reduction="sum"), X, y, 1 / (7 * 2))
    torch.testing.assert_close(empirical_fisher_operator(problem).diagonal(), EF.diagonal(),
                               **TOL)


def test_the_hessian_diagonal_is_exact_on_a_chain_and_refused_with_the_estimator_otherwise(case):
    kind, model, X, y, problem = case
    H = autograd_hessian(model, nn.functional.mse_loss, X, y)
    op = hessian_operator(problem)
    if kind == "chain":
        torch.testing.assert_close(op.diagonal(), H.diagonal(), **TOL)
        torch.testing.assert_close(damped(op, 0.5).diagonal(), H.diagonal() + 0.5, **TOL)
    else:
        with pytest.raises(UnsupportedArchitectureError, match="Hutchinson"):
            op.diagonal()


def test_a_block_is_the_principal_submatrix_of_those_parameters(case):
    _, model, X, y, problem = case
    H = autograd_hessian(model, nn.functional.mse_loss, X, y)
    names = [n for n, _ in model.named_parameters()]
    chosen = [names[-2], names[0]]  # any order in; the operator's order out
    layout = problem.layout
    index = torch.cat([torch.arange(layout.slice(n).start, layout.slice(n).stop)
                       for n in layout.names if n in chosen])
    expected = H[index][:, index]
    block = hessian_operator(problem).block(chosen)
    eye = torch.eye(block.shape[0], dtype=torch.float64)
    torch.testing.assert_close(block.matmat(eye), expected, **TOL)
    generic = MatrixOperator(H, layout).block(chosen)
    torch.testing.assert_close(generic.matmat(eye), expected, **TOL)
    torch.testing.assert_close(generic.diagonal(), expected.diagonal(), **TOL)


def test_to_dense_is_exact_and_refused_before_allocating_when_too_large(case, monkeypatch):
    _, model, X, y, problem = case
    H = autograd_hessian(model, nn.functional.mse_loss, X, y)
    G = autograd_gauss_newton(model, nn.functional.mse_loss, X, y)
    torch.testing.assert_close(hessian_operator(problem).to_dense(), H, **TOL)
    torch.testing.assert_close(gauss_newton_operator(problem).to_dense(), G, **TOL)
    monkeypatch.setattr("hesskit.memory.available_memory", lambda: 100)
    with pytest.raises(TooLargeError, match=r"matrix-free|products"):
        hessian_operator(problem).to_dense()


def test_an_operator_without_an_exact_diagonal_says_which_estimator_to_use(case):
    *_, problem = case
    with pytest.raises(UnsupportedArchitectureError, match="hutchinson_diagonal"):
        fisher_operator(problem, seed=0).diagonal()
