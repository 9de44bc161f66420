"""The weight cost (wd/2)‖θ‖² against a hand computation and autograd, in its one home."""

from __future__ import annotations

import torch

from hesskit.optim.weight_cost import weight_cost, weight_cost_value

DTYPE = torch.float64


def test_weight_cost_is_half_wd_times_the_squared_norm_with_gradient_wd_theta():
    a = torch.tensor([3.0, -4.0], dtype=DTYPE, requires_grad=True)
    b = torch.tensor([[1.0, 2.0]], dtype=DTYPE, requires_grad=True)
    cost = weight_cost([a, b], 0.1)
    assert float(cost.detach()) == 0.5 * 0.1 * (9 + 16 + 1 + 4)
    cost.backward()
    assert torch.equal(a.grad, 0.1 * a.detach()) and torch.equal(b.grad, 0.1 * b.detach())
    assert weight_cost_value([a, b], 0.1) == float(cost.detach())
    assert weight_cost_value([a, b], 0.0) == 0.0


def test_optimizers_and_the_training_objective_add_the_same_weight_cost():
    from torch import nn

    from hesskit.optim import DampedNewton
    from hesskit.training.loop import objective

    torch.manual_seed(0)
    model = nn.Linear(3, 1).to(DTYPE)
    X, y = torch.randn(8, 3, dtype=DTYPE), torch.randn(8, 1, dtype=DTYPE)
    wd = 0.3
    data = float(nn.functional.mse_loss(model(X), y))
    expected = data + 0.5 * wd * sum(float(p.square().sum()) for p in model.parameters())

    class Tiny:
        loss, weight_decay = nn.MSELoss(), wd

    Tiny.model = model
    assert abs(float(objective(Tiny, X, y)) - expected) <= 1e-15 * expected
    newton = DampedNewton(model.parameters(), hessian=lambda: torch.eye(4, dtype=DTYPE),
                          weight_decay=wd)
    assert newton._weight_cost() == weight_cost_value(model.parameters(), wd)
