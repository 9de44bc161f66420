"""One step of hesskit's optimizers on Hugging Face models, unwrapped and in train mode.

DampedNewton with a fixed λ takes p = −(H + λI)⁻¹ ∇L on the parameter block it is given,
and Hessian-free with a fixed λ (no preconditioner, warm start, backtracking or line
search; CG to a residual of 1e-13) takes p = −(G + λI)⁻¹ ∇L: both against the dense
oracles of ``reference.py``. The closure evaluates the deterministic network hesskit
differentiates (``Problem.functional_mode``: dropout off). AdaHessian differentiates the
user's closure twice and Sophia-H takes a Hutchinson Hessian diagonal: one step each is
finite, moves the block, and repeats bit for bit from a copy.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hesskit.operators import gauss_newton_operator
from hesskit.optim import CGSettings, DampedNewton, HessianFree, LevenbergMarquardt
from hesskit.optim.diagonal.adahessian import AdaHessian
from hesskit.optim.diagonal.sophia import Sophia, SophiaEstimator
from hesskit.problem import Problem
from hesskit.tensor_tree import call_model

pytest.importorskip("transformers")

from hf_zoo.models import HFCase, make
from hf_zoo.reference import Oracle, relative_error

CASES = ["gpt2_sdpa", "llama_eager", "bert_sdpa", "vit_sdpa", "resnet_train", "bart_eager"]
EXACT_CASES = ["gpt2_sdpa", "bert_sdpa", "resnet_train"]


def _setup(case: HFCase, backward: bool = True):
    problem = Problem(case.model, case.loss, case.data, params=case.block)
    named = dict(case.model.named_parameters())
    params = [named[n] for n in problem.layout.names]
    start = torch.cat([p.detach().reshape(-1) for p in params]).clone()

    def closure() -> torch.Tensor:
        for p in case.model.parameters():
            p.grad = None
        with problem.functional_mode():
            loss = sum(b.weight * problem.loss.value(call_model(case.model, b.inputs), b.targets)
                       for b in problem.batches())
        if backward:  # AdaHessian differentiates the returned loss itself
            loss.backward()
        return loss

    return problem, params, start, closure


def _moved(params, start):
    return torch.cat([p.detach().reshape(-1) for p in params]) - start


def _damping_for(matrix: torch.Tensor) -> float:
    eigenvalues = torch.linalg.eigvalsh(matrix)
    return max(0.0, -float(eigenvalues[0])) + 0.5 * max(float(eigenvalues.abs().max()), 1e-3)


def _solve(matrix, damping, gradient):
    eye = torch.eye(len(gradient), dtype=matrix.dtype)
    return -torch.linalg.solve(matrix + damping * eye, gradient)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXACT_CASES)
def test_damped_newton_step_on_a_block_equals_the_dense_damped_solve(name):
    case = make(name)
    oracle = Oracle(case.reference_model, case.loss_kind, case.data, case.block)
    H = oracle.hessian_dense()
    damping = _damping_for(H)
    problem, params, start, closure = _setup(case)
    optimizer = DampedNewton(
        params, hessian=problem, damping=LevenbergMarquardt(initial=damping, adapt=False)
    )
    optimizer.step(closure)
    assert optimizer.newton_state["accepted_steps"] == 1
    want = _solve(H, damping, oracle.gradient())
    assert relative_error(_moved(params, start), want) <= 10 * case.rtol


@pytest.mark.slow
@pytest.mark.parametrize("name", EXACT_CASES)
def test_hessian_free_step_on_a_block_equals_the_dense_damped_gauss_newton_solve(name):
    case = make(name)
    oracle = Oracle(case.reference_model, case.loss_kind, case.data, case.block)
    G = oracle.gauss_newton_matmat(torch.eye(oracle.theta.numel(), dtype=oracle.theta.dtype))
    G = (G + G.T) / 2
    damping = _damping_for(G)
    _problem, params, start, closure = _setup(case)
    optimizer = HessianFree(
        params,
        curvature=lambda: gauss_newton_operator(
            Problem(case.model, case.loss, case.data, params=case.block)),
        damping=LevenbergMarquardt(initial=damping, adapt=False),
        cg=CGSettings(max_iterations=4 * len(start), progress_tol=1e-300, rtol=1e-13,
                      warm_start_decay=0.0),
        preconditioner=None, backtracking=False, line_search=None,
    )
    optimizer.step(closure)
    assert optimizer.hf_state["last_step_size"] == 1.0
    want = _solve(G, damping, oracle.gradient())
    assert relative_error(_moved(params, start), want) <= 10 * case.rtol


def _one_step(build, name: str) -> torch.Tensor:
    case = make(name)
    _problem, params, start, closure = _setup(case, backward=build is not _adahessian)
    optimizer = build(params, case)
    optimizer.step(closure)
    moved = _moved(params, start)
    assert torch.isfinite(moved).all() and bool(moved.abs().max() > 0)
    return moved


def _adahessian(params, case):
    return AdaHessian(params, lr=0.01)


def _sophia_h(params, case):
    return Sophia(params, lr=0.01, estimator=SophiaEstimator.HUTCHINSON, seed=0,
                  curvature=lambda: Problem(case.model, case.loss, case.data,
                                            params=case.block))


@pytest.mark.parametrize("build", [_adahessian, _sophia_h], ids=["adahessian", "sophia_h"])
@pytest.mark.parametrize("name", CASES)
def test_one_curvature_estimating_step_is_finite_moves_and_repeats_bitwise(build, name):
    torch.manual_seed(0)
    first = _one_step(build, name)
    torch.manual_seed(0)
    assert torch.equal(_one_step(build, name), first)


def test_the_block_optimizers_leave_batch_norm_buffers_alone():
    case = make("resnet_train")
    buffers = copy.deepcopy(dict(case.model.named_buffers()))
    problem, params, _, closure = _setup(case)
    DampedNewton(params, hessian=problem,
                 damping=LevenbergMarquardt(initial=1.0, adapt=False)).step(closure)
    for name, value in case.model.named_buffers():
        assert torch.equal(value, buffers[name]), name
