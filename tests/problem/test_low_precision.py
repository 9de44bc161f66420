"""bfloat16 models: sums over batches are accumulated in float32, so a gradient or a
curvature product over many batches stays as accurate as one batch's."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hesskit.operators import gauss_newton_operator
from hesskit.problem import Problem


def _problems():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    X, y = torch.randn(512, 4), torch.randn(512, 3)
    batches = [(X[i : i + 8], y[i : i + 8]) for i in range(0, 512, 8)]  # 64 batches
    exact = Problem(model.double(), nn.MSELoss(), [(a.double(), b.double()) for a, b in batches])
    low = Problem(copy.deepcopy(model).to(torch.bfloat16), nn.MSELoss(),
                  [(a.bfloat16(), b.bfloat16()) for a, b in batches])
    return exact, low


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def test_gradient_loss_and_products_of_a_bfloat16_model_accumulate_in_float32():
    exact, low = _problems()
    assert low.gradient().dtype is torch.bfloat16
    assert _relative(low.gradient(), exact.gradient()) < 2e-2
    assert abs(float(low.total_loss()) - float(exact.total_loss())) < 2e-2 * float(
        exact.total_loss()
    )
    v = torch.randn(exact.num_params, dtype=torch.float64)
    product = gauss_newton_operator(low) @ v.bfloat16()
    assert product.dtype is torch.bfloat16
    assert _relative(product, gauss_newton_operator(exact) @ v) < 5e-3  # bf16 sums: 8.5e-3
