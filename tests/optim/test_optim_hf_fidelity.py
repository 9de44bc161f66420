"""HessianFree against Martens' released HFDemo code: each test fails on hesskit's former rule.

References (line numbers of the original HFDemo release): ρ, ``nnet_train_2.m`` lines
1340–1353; NaN ρ, line 1392; chunks, line 940; kept CG iterates, ``conjgrad_1.m`` lines
13–14, 69–73; λ₀, ``nnet_train_2.m`` line 116.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hesskit.optim.hessian_free.solve as hessian_free_module
from hesskit.operators.base import MatrixOperator
from hesskit.optim import (
    PREVIOUS_RATIO,
    CGSettings,
    CurvatureChunk,
    HessianFree,
    LevenbergMarquardt,
    RoundRobinChunks,
)
from hesskit.training.optimizers import OptimizerContext

DTYPE = torch.float64
A = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], dtype=DTYPE)
B = torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE)


def quadratic_hf(damping=10.0, chunk_loss=None, offset=0.0, scale=1.0, **options):
    """F(θ) = offset + scale·(½θᵀAθ − bᵀθ) from θ = 0, B = A exactly, one CG solve to
    convergence, no backtracking or line search, λ fixed (``adapt=False``) unless asked."""
    theta = nn.Parameter(torch.zeros(3, dtype=DTYPE))
    operator = MatrixOperator(scale * A)
    curvature = (lambda: operator) if chunk_loss is None else (
        lambda: CurvatureChunk(operator, lambda: chunk_loss(theta)))
    if not isinstance(damping, LevenbergMarquardt):
        damping = LevenbergMarquardt(initial=damping, adapt=False)
    optimizer = HessianFree(
        [theta], curvature=curvature, damping=damping,
        cg=CGSettings(max_iterations=50, rtol=1e-14),
        backtracking=False, line_search=None, **options,
    )

    def closure():
        optimizer.zero_grad()
        loss = offset + scale * (0.5 * theta @ A @ theta - B @ theta)
        loss.backward()
        return loss

    return theta, optimizer, closure


def damped_step(damping):
    return -torch.linalg.solve(A + damping * torch.eye(3, dtype=DTYPE), -B)


def test_ratio_uses_the_undamped_model_so_it_is_one_on_a_quadratic():
    """F(θ+p) − F(θ) = ∇Fᵀp + ½pᵀAp = q₀(p) exactly, so ρ = 1 for any λ; over the damped
    model (the former rule) ρ = q₀/q_λ, here ≈ 1.6."""
    p = damped_step(10.0)
    q0 = float(-B @ p + 0.5 * p @ A @ p)
    q_damped = q0 + 0.5 * 10.0 * float(p @ p)
    _, optimizer, closure = quadratic_hf()
    optimizer.step(closure)
    assert optimizer.hf_state["last_ratio"] == pytest.approx(1.0, abs=1e-12)
    _, former, closure = quadratic_hf(ratio=PREVIOUS_RATIO)
    former.step(closure)
    assert former.hf_state["last_ratio"] == pytest.approx(q0 / q_damped, rel=1e-10)
    assert q0 / q_damped > 1.5


def test_ratio_numerator_is_the_change_of_the_curvature_chunks_objective():
    C = torch.diag(torch.tensor([1.0, 4.0, 2.0], dtype=DTYPE))
    c = torch.tensor([0.5, -1.0, 1.0], dtype=DTYPE)

    def chunk_objective(theta):
        return 0.5 * theta @ C @ theta - c @ theta

    p = damped_step(10.0)
    expected = float(chunk_objective(p)) / float(-B @ p + 0.5 * p @ A @ p)
    _, optimizer, closure = quadratic_hf(chunk_loss=chunk_objective)
    optimizer.step(closure)
    assert optimizer.hf_state["last_ratio"] == pytest.approx(expected, rel=1e-12)


def test_ratio_is_minus_infinity_when_the_chunk_objective_rises_and_damping_grows():
    _, optimizer, closure = quadratic_hf(
        chunk_loss=lambda theta: theta.square().sum(),  # rises from θ = 0 whatever p is
        damping=LevenbergMarquardt(initial=10.0),
    )
    optimizer.step(closure)
    assert optimizer.hf_state["last_ratio"] == -math.inf
    assert optimizer.hf_state["damping"] == pytest.approx(15.0, rel=1e-15)


def test_a_nan_ratio_raises_the_damping():
    """F = 1 + 1e-12·(quadratic): the predicted decrease (≈1e-13) is below the loss's
    rounding (16 ulps of 1), so ρ is NaN, which raises λ (the former rule kept it)."""
    for rule, expected in [(LevenbergMarquardt(initial=10.0), 15.0),
                           (LevenbergMarquardt(initial=10.0, nan_raises=False), 10.0)]:
        _, optimizer, closure = quadratic_hf(damping=rule, offset=1.0, scale=1e-12)
        optimizer.step(closure)
        assert math.isnan(optimizer.hf_state["last_ratio"])
        assert optimizer.hf_state["damping"] == pytest.approx(expected, rel=1e-15)


def test_kept_cg_iterates_are_ceil_of_5_times_powers_of_1_3(monkeypatch):
    seen = []
    real = hessian_free_module.conjugate_gradient

    def spy(*args, **kwargs):
        seen.append(tuple(kwargs["snapshot_at"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(hessian_free_module, "conjugate_gradient", spy)
    _, optimizer, closure = quadratic_hf()
    optimizer.cg = CGSettings(max_iterations=250)
    optimizer.step(closure)
    assert seen[0] == (5, 7, 9, 11, 15, 19, 25, 32, 41, 54, 69, 90, 117, 152, 197)


def test_initial_damping_is_45_in_the_optimizer_and_the_training_registry():
    _, optimizer, _ = quadratic_hf(damping=LevenbergMarquardt())
    assert optimizer.hf_state["damping"] == 45.0
    assert OptimizerContext.__dataclass_fields__["initial_damping"].default == 45.0


def test_round_robin_chunks_partition_the_data_and_repeat_every_numchunks_steps():
    chunks = RoundRobinChunks(10, 4, seed=3)
    seen = [chunks.indices(step) for step in range(1, 9)]
    assert sorted(torch.cat(seen[:4]).tolist()) == list(range(10))
    assert all(torch.equal(seen[i], seen[i + 4]) for i in range(4))
    assert all(not torch.equal(seen[i], seen[i + 1]) for i in range(3))
