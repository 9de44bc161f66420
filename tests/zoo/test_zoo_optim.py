"""Every zoo model: one DampedNewton and one HessianFree step equal dense solves.

DampedNewton with a fixed λ (``adapt=False``) and H + λI positive definite takes
p = −(H + λI)⁻¹ ∇L (its module docstring). HessianFree with a fixed λ, no preconditioner,
no warm start, no backtracking and no line search takes CG's solution of (G + λI) p = −∇L,
here solved to a residual of 1e-13 so that it equals the dense solve.
"""

from __future__ import annotations

import pytest
import torch

from hesskit.operators import gauss_newton_operator
from hesskit.optim import CGSettings, DampedNewton, HessianFree, LevenbergMarquardt
from hesskit.problem import Problem
from zoo.models import ZooCase, make
from zoo.oracle import assert_relative, reference, zoo_params


def _setup(name: str) -> tuple[ZooCase, list[torch.Tensor], torch.Tensor, object]:
    case = make(name)
    named = dict(case.model.named_parameters())
    params = [named[n] for n in case.names]
    start = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    X, y = case.all_data()

    def closure() -> torch.Tensor:
        for p in case.model.parameters():
            p.grad = None
        loss = case.loss(case.model(X), y)
        loss.backward()
        return loss

    return case, params, start, closure


def _moved(params: list[torch.Tensor], start: torch.Tensor) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]) - start


def _damping_for(matrix: torch.Tensor) -> float:
    """λ with H + λI well conditioned and positive definite: −λ_min + ½ ρ(H)."""
    eigenvalues = torch.linalg.eigvalsh(matrix)
    radius = float(eigenvalues.abs().max())
    return max(0.0, -float(eigenvalues[0])) + 0.5 * max(radius, 1e-3)


def _solve(matrix: torch.Tensor, damping: float, gradient: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(len(gradient), dtype=matrix.dtype)
    return -torch.linalg.solve(matrix + damping * eye, gradient)


@pytest.mark.parametrize("name", zoo_params())
def test_damped_newton_step_equals_the_dense_damped_solve(name):
    ref = reference(name)
    case, params, start, closure = _setup(name)
    damping = _damping_for(ref.hessian)
    problem = Problem(case.model, case.loss, case.data, params=case.params)
    optimizer = DampedNewton(
        params, hessian=problem, damping=LevenbergMarquardt(initial=damping, adapt=False)
    )
    optimizer.step(closure)
    assert optimizer.newton_state["accepted_steps"] == 1, f"{name}: the Newton step was rejected"
    want = _solve(ref.hessian, damping, ref.gradient)
    assert_relative(_moved(params, start), want, f"{name}: DampedNewton step (λ={damping:.3g})")


@pytest.mark.parametrize("name", zoo_params())
def test_hessian_free_step_equals_the_dense_damped_gauss_newton_solve(name):
    ref = reference(name)
    case, params, start, closure = _setup(name)
    damping = _damping_for(ref.gauss_newton)

    def curvature():
        return gauss_newton_operator(Problem(case.model, case.loss, case.data, params=case.params))

    optimizer = HessianFree(
        params,
        curvature=curvature,
        damping=LevenbergMarquardt(initial=damping, adapt=False),
        cg=CGSettings(
            max_iterations=4 * len(start), progress_tol=1e-300, rtol=1e-13, warm_start_decay=0.0
        ),
        preconditioner=None,
        backtracking=False,
        line_search=None,
    )
    optimizer.step(closure)
    assert optimizer.hf_state["last_step_size"] == 1.0, f"{name}: the HF step was rejected"
    want = _solve(ref.gauss_newton, damping, ref.gradient)
    assert_relative(_moved(params, start), want, f"{name}: HessianFree step (λ={damping:.3g})")
