"""Sophia's Gauss-Newton-Bartlett estimate over several batches: one gradient of the total
loss, squared (the paper's B·ĝ⊙ĝ on the whole curvature batch), with keyed target draws
that do not depend on the batching (what makes it data parallel)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hesskit.operators.kfac_factors import keyed_sample_targets
from hesskit.optim.diagonal.sophia import gauss_newton_bartlett_diagonal
from hesskit.problem import Problem


@pytest.fixture(autouse=True)
def _float64():
    """Float64 in this module only (a module-level default would leak into other files)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(10, 3, generator=g), torch.randint(0, 3, (10,), generator=g)


def test_gnb_is_the_squared_gradient_of_the_total_loss_on_sampled_targets_times_n():
    model, X, y = _classifier()
    loss = nn.CrossEntropyLoss()
    split = Problem(model, loss, [(X[:4], y[:4]), (X[4:], y[4:])])
    estimate = gauss_newton_bartlett_diagonal(split, seed=3)
    with torch.no_grad():
        z = model(X)
    y_hat = keyed_sample_targets(split.loss, z, 0, 3)
    grads = torch.autograd.grad(loss(model(X), y_hat), list(model.parameters()))
    reference = torch.cat([g.reshape(-1) for g in grads]).square() * len(X)  # B · ĝ ⊙ ĝ
    torch.testing.assert_close(estimate, reference, rtol=1e-12, atol=1e-15)
    whole = gauss_newton_bartlett_diagonal(Problem(model, loss, (X, y)), seed=3)
    torch.testing.assert_close(whole, estimate, rtol=1e-12, atol=1e-15)

