"""Products on a fixed batch reuse its linearization: 50 products run 1 forward per batch,
plus one determinism check (``Problem.check_deterministic``) where the model is not a
chain proved by the structural engine (the Hessian of this MLP is)."""

from __future__ import annotations

import pytest
import torch
from test_op_cases import make_case

from hesskit.operators import (
    empirical_fisher_operator,
    fisher_operator,
    gauss_newton_operator,
    hessian_operator,
)

BUILDERS = {
    "hessian": hessian_operator,
    "gauss_newton": gauss_newton_operator,
    "fisher": lambda p, cache=None: fisher_operator(p, samples=2, generator=0, cache=cache),
    "empirical_fisher": empirical_fisher_operator,
}


PASSES_PER_BUILD = {"hessian": 1, "gauss_newton": 2, "fisher": 2, "empirical_fisher": 2}
"""Forward passes per batch linearization: the linearizing pass, and the check pass."""


def count_forward_passes(model):
    counter = {"forward": 0}

    def hook(module, inputs, output):
        counter["forward"] += 1

    model.register_forward_hook(hook)
    return counter


@pytest.mark.parametrize("kind", BUILDERS)
def test_fifty_products_run_one_forward_pass_per_batch(kind):
    problem, model, *_ = make_case("ce", "mean", batch_sizes=(3, 3, 1))
    counter = count_forward_passes(model)
    op = BUILDERS[kind](problem)
    assert counter["forward"] == 0  # building the operator runs nothing
    generator = torch.Generator().manual_seed(0)
    for _ in range(25):
        op.matvec(torch.randn(op.shape[0], generator=generator, dtype=torch.float64))
    op.matmat(torch.randn(op.shape[0], 25, generator=generator, dtype=torch.float64))
    assert counter["forward"] == PASSES_PER_BUILD[kind] * problem.num_batches


@pytest.mark.parametrize("kind", BUILDERS)
def test_without_cache_each_product_call_runs_one_forward_pass_per_batch(kind):
    problem, model, *_ = make_case("mse", "mean", batch_sizes=(3, 3, 1))
    counter = count_forward_passes(model)
    op = BUILDERS[kind](problem, cache=False)
    for _ in range(4):
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
    assert counter["forward"] == 4 * PASSES_PER_BUILD[kind] * problem.num_batches


def test_cache_is_on_by_default_for_few_batches_and_off_for_many():
    problem, *_ = make_case("mse", "mean", batch_sizes=(2, 2))
    assert gauss_newton_operator(problem).cache
    many, *_ = make_case("mse", "mean", batch_sizes=(1,) * 17)
    assert many.num_batches > gauss_newton_operator(many).max_cached_batches
    assert not gauss_newton_operator(many).cache
