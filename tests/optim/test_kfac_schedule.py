"""K-FAC's mini-batch schedule (Martens & Grosse 2015, §13), its state dict under
``weights_only`` loading, its case count and its keyed target draws."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from closures import batch_closure
from hesskit.errors import InvalidArgumentError
from hesskit.operators.kfac_factors import FactorTargets, factor_statistics, kfac_blocks
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import (
    KFAC_FULL_BATCH_ITERATION,
    KFAC_INITIAL_BATCH,
    KFACBatchSchedule,
    KFACSchedule,
)
from hesskit.problem import Problem


@pytest.fixture(autouse=True)
def _float64():
    """Float64 in this module only (a module-level default would leak into other files)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_the_schedule_constants_are_the_papers():
    assert KFAC_INITIAL_BATCH == 1000  # m₁ (§13)
    assert KFAC_FULL_BATCH_ITERATION == 500  # b chosen so that m_500 = |S| (§13)
    schedule = KFACBatchSchedule()
    assert schedule.b(60000) == pytest.approx(499 / math.log(60), rel=1e-15)
    assert KFACSchedule().statistics_fraction == 1 / 8  # τ₁ (§13)


def test_the_schedule_grows_exponentially_and_reaches_the_full_set_at_iteration_500():
    schedule = KFACBatchSchedule()
    n = 60000
    sizes = [schedule.size(k, n) for k in range(1, 502)]
    assert sizes[0] == 1000 and sizes[498] < n and sizes[499] == n and sizes[500] == n
    b = 499 / math.log(60)
    for k in (2, 50, 200, 499):
        assert sizes[k - 1] == math.ceil(1000 * math.exp((k - 1) / b) - 1e-9)
    assert sizes == sorted(sizes)
    assert [schedule.size(k, 800) for k in (1, 7)] == [800, 800]  # |S| < m₁: all of S


def test_a_fixed_rate_and_bad_settings():
    assert KFACBatchSchedule(initial=10, rate=math.inf).size(1000, 100) == 10
    assert KFACBatchSchedule(initial=10, rate=1.0).size(2, 100) == math.ceil(10 * math.e)
    with pytest.raises(InvalidArgumentError):
        KFACBatchSchedule(initial=0)
    with pytest.raises(InvalidArgumentError):
        KFACBatchSchedule().size(0, 10)


def _classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)


def test_the_state_dict_loads_with_weights_only_and_resumes_exactly():
    model, X, y = _classifier()
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss())
    opt_closure = batch_closure(opt, X, y)
    for _ in range(2):
        opt.step(opt_closure)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    params = [p.detach().clone() for p in model.parameters()]
    opt.step(opt_closure)
    after = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, q in zip(model.parameters(), params, strict=True):
            p.copy_(q)
    fresh = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss())
    fresh.load_state_dict(saved)
    fresh_closure = batch_closure(fresh, X, y)
    fresh.step(fresh_closure)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), after, strict=True))


def test_cases_count_every_pass_through_the_model():
    model, X, y = _classifier()
    opt = KFAC(model.parameters(), model=model, loss=nn.CrossEntropyLoss(),
               schedule=KFACSchedule(damping_interval=2))
    opt_closure = batch_closure(opt, X, y)
    opt.step(opt_closure)  # gradient 12, statistics ⌈12/8⌉ = 2, products 2 × 12
    assert opt.kfac_state["cases"] == 12 + 2 + 24
    opt.step(opt_closure)  # the same, and ρ's forward pass at T₁ = 2
    assert opt.kfac_state["cases"] == 2 * (12 + 2 + 24) + 12


def test_keyed_draws_do_not_depend_on_the_batching_and_change_with_the_seed():
    model, X, y = _classifier()
    names = [n for n, _ in model.named_parameters()]
    blocks = kfac_blocks(model, names)
    whole = Problem(model, nn.CrossEntropyLoss(), (X, y))
    split = Problem(model, nn.CrossEntropyLoss(), [(X[:5], y[:5]), (X[5:], y[5:])])
    one = factor_statistics(whole, blocks, FactorTargets.SAMPLED, seed=7)
    two = factor_statistics(split, blocks, FactorTargets.SAMPLED, seed=7)
    other = factor_statistics(whole, blocks, FactorTargets.SAMPLED, seed=8)
    for w in one:
        torch.testing.assert_close(one[w].G, two[w].G, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(one[w].A, two[w].A, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(one["2.weight"].G, other["2.weight"].G)
