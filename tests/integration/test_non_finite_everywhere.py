"""A NaN or Inf in inputs, targets or parameters ends every feature with one NonFiniteError
that names the tensor, instead of NaN results."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hesskit import diagonal, hessian_of, top_eigenpairs
from hesskit.errors import NonFiniteError
from hesskit.operators import (
    empirical_fisher_operator,
    fisher_operator,
    gauss_newton_operator,
    hessian_operator,
)
from hesskit.problem import Problem

FEATURES = {
    "hessian product": lambda p: hessian_operator(p) @ torch.ones(p.num_params).double(),
    "gauss-newton product": lambda p: gauss_newton_operator(p) @ torch.ones(p.num_params).double(),
    "fisher product": lambda p: fisher_operator(p, seed=0) @ torch.ones(p.num_params).double(),
    "empirical fisher product": lambda p: empirical_fisher_operator(p)
    @ torch.ones(p.num_params).double(),
    "dense hessian": lambda p: hessian_of(p),
    "diagonal": lambda p: diagonal(p, "hessian"),
    "trace": lambda p: gauss_newton_operator(p).trace(),
    "top eigenpairs": lambda p: top_eigenpairs(hessian_operator(p), 2),
    "gradient": lambda p: p.gradient(),
}


def _data(where: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    if where == "inputs":
        X[2, 1] = float("nan")
    elif where == "targets":
        y[4, 0] = float("inf")
    return model, X, y


@pytest.mark.parametrize("where", ["inputs", "targets"])
def test_non_finite_data_is_refused_when_the_problem_is_built(where):
    model, X, y = _data(where)
    with pytest.raises(NonFiniteError, match=where):
        Problem(model, nn.MSELoss(), (X, y))


@pytest.mark.parametrize("feature", FEATURES)
def test_non_finite_parameters_end_every_feature_with_one_clear_error(feature):
    model, X, y = _data("parameters")
    problem = Problem(model, nn.MSELoss(), (X, y))
    with torch.no_grad():
        model[2].weight[1, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"2\.weight"):
        FEATURES[feature](problem)
