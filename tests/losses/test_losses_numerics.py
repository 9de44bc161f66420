"""Softmax cross-entropy curvature in float32 on saturated logits keeps its digits.

Logits randn × 1e4, with the runner-up class of each sample placed a gap g ∈ [0.5, 60]
below the winner: p_winner rounds to 1 in float32 while the curvature p_2 (1 − p_2) stays
representable. The reference is the product in float64 from the same float32 logits
(itself checked against 60-digit decimals); the per-sample relative error must be ≤ 1e-5
(float32 ε ≈ 6e-8 times the gap, the relative error of exp(−g), is ≤ 4e-6).
"""

from __future__ import annotations

import torch
from loss_oracles import softmax_hessian_vector_decimal

from hesskit.losses import CrossEntropyLoss

N, C = 64, 10


def _saturated_logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = 1e4 * torch.randn(N, C, generator=g, dtype=torch.float64)
    top = z.argmax(1)
    second = (top + 1 + torch.randint(0, C - 1, (N,), generator=g)) % C
    gap = torch.linspace(0.5, 60.0, N, dtype=torch.float64)
    z[torch.arange(N), second] = z[torch.arange(N), top] - gap
    return z.float()


def _per_sample_relative_error(got: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    diff = (got.double() - exact).reshape(N, -1).norm(dim=1)
    return diff / exact.reshape(N, -1).norm(dim=1)


def _vectors() -> torch.Tensor:
    return torch.randn(N, C, generator=torch.Generator().manual_seed(1))


def test_saturated_cross_entropy_hessian_vector_is_accurate_in_float32() -> None:
    z, u, y = _saturated_logits(), _vectors(), torch.zeros(N, dtype=torch.long)
    loss = CrossEntropyLoss("sum")
    exact = loss.hessian_vector(z.double(), y, u.double())
    got = loss.hessian_vector(z, y, u)
    assert got.dtype == torch.float32
    assert _per_sample_relative_error(got, exact).max() <= 1e-5


def test_the_naive_product_fails_the_same_check() -> None:
    """p ⊙ (u − pᵀu) in float32: the check above does catch the cancellation."""
    z, u, y = _saturated_logits(), _vectors(), torch.zeros(N, dtype=torch.long)
    exact = CrossEntropyLoss("sum").hessian_vector(z.double(), y, u.double())
    p = torch.softmax(z, dim=1)
    naive = p * (u - (p * u).sum(1, keepdim=True))
    assert _per_sample_relative_error(naive, exact).max() > 1e-2


def test_float64_product_matches_high_precision_arithmetic() -> None:
    """The float64 reference itself, against (diag p − p pᵀ) u in 60-digit decimals."""
    z, u = _saturated_logits().double(), _vectors().double()
    expected = softmax_hessian_vector_decimal(z, u)
    got = CrossEntropyLoss("sum").hessian_vector(z, torch.zeros(N, dtype=torch.long), u)
    assert _per_sample_relative_error(got, expected).max() <= 1e-12


def test_saturated_cross_entropy_factor_is_accurate_in_float32() -> None:
    z, y = _saturated_logits(), torch.zeros(N, dtype=torch.long)
    loss = CrossEntropyLoss("sum")
    S64 = loss.hessian_sqrt(z.double(), y)
    S32 = loss.hessian_sqrt(z, y)
    exact = S64 @ S64.transpose(1, 2)
    got = S32 @ S32.transpose(1, 2)
    assert _per_sample_relative_error(got, exact).max() <= 1e-5


def test_saturated_factor_diagonal_keeps_one_minus_p_of_the_winner() -> None:
    """S_cc = √p_c (1 − p_c): for the winner 1 − p_c is the runner-up mass, not 1 − 1 = 0."""
    z, y = _saturated_logits(), torch.zeros(N, dtype=torch.long)
    loss = CrossEntropyLoss("sum")
    exact = loss.hessian_sqrt(z.double(), y).diagonal(dim1=1, dim2=2)
    got = loss.hessian_sqrt(z, y).diagonal(dim1=1, dim2=2)
    assert _per_sample_relative_error(got, exact).max() <= 1e-5
