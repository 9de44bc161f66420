"""Every hesskit optimizer steps on every model of the Hugging Face zoo (issue 22).

For each optimizer × model: a step is finite and moves the parameters; a step whose loss is
NaN (the logits poisoned by a forward hook, so that the loss, its gradient and every later
evaluation are NaN, as for a bad batch) leaves every parameter bitwise unchanged and is
counted as a rejection; a clean step after it is finite again.

The models are the zoo's six families (``gpt2_sdpa``, ``llama_eager``, ``bert_sdpa``,
``vit_sdpa``, ``resnet_train``, ``bart_eager``, as in ``test_hf_optim.py``), on their first
batch. DampedNewton forms a dense Hessian, so it steps on the case's parameter block (tens
of entries; every other optimizer on all parameters). Shampoo preconditions from its first
step (``update_freq=1``: with its default of 100 the steps tested here would be Adam's
exactly) and Sophia re-estimates its diagonal every step (``interval=1``).

Construction lives in the ``_build_*`` helpers only (the constructors are being unified).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from closures import batch_closure
from hesskit.operators import gauss_newton_operator
from hesskit.optim import (
    KFAC,
    CGSettings,
    DampedNewton,
    HessianFree,
    KFACSchedule,
    LevenbergMarquardt,
    Shampoo,
    Sophia,
    StochasticHessianFree,
)
from hesskit.optim.diagonal.adahessian import AdaHessian
from hesskit.optim.hessian_free.stochastic import BatchGrowth
from hesskit.problem import Problem
from hesskit.tensor_tree import call_model

pytest.importorskip("transformers")

from hf_zoo.models import HFCase, make, one_torch_thread  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = ["gpt2_sdpa", "llama_eager", "bert_sdpa", "vit_sdpa", "resnet_train", "bart_eager"]


@dataclass
class Run:
    """An optimizer on a case: ``step()`` takes one step; ``params`` are those it moves."""

    optimizer: torch.optim.Optimizer
    step: Callable[[], object]
    params: list[torch.Tensor]


def _closure(case: HFCase, params: list[torch.Tensor], *, backward: bool = True):
    """The first batch's loss through the deterministic network (dropout off, as hesskit's
    own passes); ``backward`` False for AdaHessian, which differentiates it itself."""
    problem = Problem(case.model, case.loss, [case.data[0]])

    def closure() -> torch.Tensor:
        for p in case.model.parameters():
            p.grad = None
        with problem.functional_mode():
            inputs, targets = case.data[0]
            loss = problem.loss.value(call_model(case.model, inputs), targets)
        if backward:
            loss.backward()
        return loss

    return closure


def _all(case: HFCase) -> list[torch.Tensor]:
    return [p for p in case.model.parameters() if p.requires_grad]


def _build_damped_newton(case: HFCase) -> Run:
    named = dict(case.model.named_parameters())
    params = [named[n] for n in case.block]
    optimizer = DampedNewton(
        params, hessian=Problem(case.model, case.loss, [case.data[0]], params=case.block),
        damping=LevenbergMarquardt(initial=1.0))
    closure = _closure(case, params)
    return Run(optimizer, lambda: optimizer.step(closure), params)


def _build_hessian_free(case: HFCase) -> Run:
    params = _all(case)
    optimizer = HessianFree(
        params,
        curvature=lambda: gauss_newton_operator(Problem(case.model, case.loss, [case.data[0]])),
        damping=LevenbergMarquardt(initial=1.0), cg=CGSettings(max_iterations=10))
    closure = _closure(case, params)
    return Run(optimizer, lambda: optimizer.step(closure), params)


def _build_stochastic_hessian_free(case: HFCase) -> Run:
    optimizer = StochasticHessianFree(
        case.model, case.loss, case.data[0], batches=BatchGrowth(initial=2, growth=1.0),
        damping=LevenbergMarquardt(initial=1.0), cg=CGSettings(max_iterations=10))
    return Run(optimizer, optimizer.step, _all(case))


def _build_kfac(case: HFCase) -> Run:
    optimizer = KFAC(_all(case), model=case.model, loss=case.loss,
                     schedule=KFACSchedule(statistics_fraction=1.0))
    closure = batch_closure(optimizer, *case.data[0])
    return Run(optimizer, lambda: optimizer.step(closure), _all(case))


def _build_shampoo(case: HFCase) -> Run:
    params = _all(case)
    optimizer = Shampoo(params, lr=0.01, update_freq=1)
    closure = _closure(case, params)
    return Run(optimizer, lambda: optimizer.step(closure), params)


def _build_sophia(case: HFCase) -> Run:
    params = _all(case)
    optimizer = Sophia(params, lr=0.01, interval=1, seed=0,
                       curvature=lambda: Problem(case.model, case.loss, [case.data[0]]))
    closure = _closure(case, params)
    return Run(optimizer, lambda: optimizer.step(closure), params)


def _build_adahessian(case: HFCase) -> Run:
    params = _all(case)
    optimizer = AdaHessian(params, lr=0.01)
    closure = _closure(case, params, backward=False)
    return Run(optimizer, lambda: optimizer.step(closure), params)


BUILDERS = {
    "damped_newton": _build_damped_newton,
    "hessian_free": _build_hessian_free,
    "stochastic_hessian_free": _build_stochastic_hessian_free,
    "kfac": _build_kfac,
    "shampoo": _build_shampoo,
    "sophia": _build_sophia,
    "adahessian": _build_adahessian,
}


def _poison_logits(model: torch.nn.Module):
    """A forward hook that makes the model's logits NaN (its loss and gradient then are)."""
    def hook(_module, _args, output):
        if isinstance(output, torch.Tensor):
            return output * math.nan
        output["logits"] = output["logits"] * math.nan
        return output

    return model.register_forward_hook(hook)


def _rejections(optimizer: torch.optim.Optimizer) -> int:
    for name in ("kfac_state", "hf_state", "newton_state", "shampoo_state", "sophia_state",
                 "adahessian_state"):
        if hasattr(optimizer, name):
            return int(getattr(optimizer, name).get("nonfinite_rejections", 0))
    raise AssertionError(f"no optimizer-wide state on {type(optimizer).__name__}")


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("optimizer", list(BUILDERS))
def test_a_step_is_finite_and_moves_and_a_nan_loss_leaves_the_parameters_bitwise(
    optimizer, name
):
    torch.manual_seed(0)
    case = make(name)
    run = BUILDERS[optimizer](case)
    start = _flat(run.params)
    run.step()
    moved = _flat(run.params)
    assert torch.isfinite(moved).all()
    assert not torch.equal(moved, start), "the first step did not move the parameters"

    everything = {n: p.detach().clone() for n, p in case.model.named_parameters()}
    rejected = _rejections(run.optimizer)
    handle = _poison_logits(case.model)
    try:
        run.step()
    finally:
        handle.remove()
    for n, p in case.model.named_parameters():
        assert torch.equal(p, everything[n]), f"{n} changed on a NaN loss"
    assert _rejections(run.optimizer) == rejected + 1

    run.step()
    assert torch.isfinite(_flat(run.params)).all()
