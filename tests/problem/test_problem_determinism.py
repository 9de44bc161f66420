"""Inside hesskit's calls the model is one fixed function: functional dropout is off,
random operations are refused by name, and what remains is caught by a determinism check."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from torch import nn

from hesskit.dense import hessian_of
from hesskit.errors import InvalidArgumentError
from hesskit.operators import (
    empirical_fisher_operator,
    gauss_newton_operator,
    hessian_operator,
)
from hesskit.problem import Problem
from reference import autograd_gauss_newton, autograd_hessian


class FunctionalDropoutAttention(nn.Module):
    """Dropout as Hugging Face models call it: functionally, gated on ``self.training``."""

    def __init__(self, p: float = 0.3) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.p = p

    def forward(self, x):  # x: [n, T, 4]
        q, k, v = self.query(x), self.key(x), self.value(x)
        h = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.p if self.training else 0.0
        )
        h = F.dropout(h, p=self.p, training=self.training)
        h = torch.dropout(h, self.p, self.training)
        return self.head(F.alpha_dropout(h, p=self.p, training=self.training).mean(1))


class StochasticDepth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 3)

    def forward(self, x):
        keep = torch.rand(x.shape[0], 1) > 0.2
        return x + keep * self.inner(x)


class WithStochasticDepth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block, self.head = StochasticDepth(), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.block(x))


class PythonRandom(nn.Module):
    """Randomness hesskit cannot see: Python's own generator."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, x):
        return self.layer(x) * (1.0 + random.random())


def _attention_case():
    torch.manual_seed(0)
    model = FunctionalDropoutAttention().double().train()
    X = torch.randn(5, 3, 4, dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)
    return model, X, y


@pytest.mark.parametrize("build", [hessian_operator, gauss_newton_operator,
                                   empirical_fisher_operator])
def test_functional_dropout_in_train_mode_is_off_and_products_repeat_bitwise(build):
    model, X, y = _attention_case()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    first = build(Problem(model, nn.MSELoss(), (X, y))) @ v
    second = build(Problem(model, nn.MSELoss(), (X, y))) @ v
    assert torch.equal(first, second)


def test_train_mode_functional_dropout_gives_the_deterministic_networks_curvature():
    model, X, y = _attention_case()
    problem = Problem(model, nn.MSELoss(), (X, y))
    reference = FunctionalDropoutAttention(p=0.0).double()
    reference.load_state_dict(model.state_dict())
    H = autograd_hessian(reference, nn.functional.mse_loss, X, y)
    G = autograd_gauss_newton(reference, nn.functional.mse_loss, X, y)
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(hessian_operator(problem).matmat(eye), H, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gauss_newton_operator(problem).matmat(eye), G, rtol=1e-9,
                               atol=1e-12)
    dense = hessian_of(problem)  # per-column vmap: no "random operation" error
    torch.testing.assert_close(dense.matrix("H"), H, rtol=1e-9, atol=1e-12)
    assert model.training


def test_a_random_operation_in_forward_is_refused_naming_it_and_its_module():
    torch.manual_seed(0)
    model = WithStochasticDepth().double()
    problem = Problem(model, nn.MSELoss(), (torch.randn(4, 3, dtype=torch.float64),
                                            torch.randn(4, 2, dtype=torch.float64)))
    pattern = r"random operation torch\.rand in module 'block' \(StochasticDepth"
    with pytest.raises(InvalidArgumentError, match=pattern):
        gauss_newton_operator(problem) @ torch.ones(problem.num_params, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match=pattern):
        problem.total_loss()


def test_randomness_hesskit_cannot_see_is_caught_by_the_determinism_check():
    model = PythonRandom().double()
    problem = Problem(model, nn.MSELoss(), (torch.randn(4, 3, dtype=torch.float64),
                                            torch.randn(4, 2, dtype=torch.float64)))
    v = torch.ones(problem.num_params, dtype=torch.float64)
    for build in (hessian_operator, gauss_newton_operator):
        with pytest.raises(InvalidArgumentError, match="not one fixed function"):
            build(problem) @ v


def test_rrelu_and_native_dropout_act_as_in_eval_mode():
    from hesskit.functional_view import functional_mode

    class Noisy(nn.Module):
        def forward(self, x):
            return (F.rrelu(x, training=True) + torch.rrelu(x, 0.1, 0.3, True)
                    + torch.native_dropout(x, 0.5, True)[0])

    model, x = Noisy(), torch.randn(7, dtype=torch.float64)
    with functional_mode(model):
        got = model(x)
    assert torch.equal(got, F.rrelu(x) + torch.rrelu(x, 0.1, 0.3, False) + x)
