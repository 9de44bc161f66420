"""K-FAC, Sophia (GNB and Hutchinson), AdaHessian and Shampoo data parallel: 2 gloo ranks
with half the batch each against one process with the whole batch, in float32.

Claims: after three steps the parameters equal the single-process ones to 1e-5, and are
bitwise identical across the ranks. K-FAC's factors are all-reduced (a convolution and a
linear layer, with ρ and γ adaptations inside the three steps), Sophia's and AdaHessian's
curvature estimates and gradients too; sampled targets (K-FAC's Fisher, Sophia's GNB) are
keyed by the global sample index, and the single process uses the same keyed draws.
Shampoo has no curvature estimate of its own: it sums the closure's loss share and the
gradient over the ranks, and its statistics follow from the summed gradient.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from hesskit.distributed import sample_fraction, shard_of
from hesskit.optim.diagonal.adahessian import AdaHessian
from hesskit.optim.diagonal.sophia import Sophia, SophiaEstimator
from hesskit.optim.kfac.optimizer import KFAC
from hesskit.optim.kfac.steps import KFACSchedule
from hesskit.problem import Problem
from spawned_ranks import free_port, spawned_ranks

RANKS = 2
DEADLINE_S = 120
NUM_SAMPLES = 8
STEPS = 3
METHODS = ("kfac", "sophia", "sophia-h", "adahessian", "shampoo")


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(NUM_SAMPLES, 1, 4, 4, generator=g), torch.randint(
        0, 3, (NUM_SAMPLES,), generator=g)


def _model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(32, 3))


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _run(method: str) -> list[torch.Tensor]:
    """Three steps of ``method`` on this rank's shard (the whole batch alone)."""
    X, Y = _data()
    X, Y = shard_of(X), shard_of(Y)
    model, loss_fn = _model(), nn.CrossEntropyLoss()
    share = sample_fraction(len(X))

    def share_loss() -> torch.Tensor:
        return share * loss_fn(model(X), Y)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = share_loss()
        value.backward()
        return value

    if method == "kfac":
        optimizer = KFAC(model.parameters(), model=model, loss=loss_fn, keyed_targets=True,
                         schedule=KFACSchedule(
            initial_damping=1.0, damping_interval=2, gamma_interval=3,
            statistics_fraction=1.0))
    elif method.startswith("sophia"):
        estimator = SophiaEstimator.HUTCHINSON if method == "sophia-h" else (
            SophiaEstimator.GAUSS_NEWTON_BARTLETT)
        optimizer = Sophia(model.parameters(), curvature=lambda: Problem(model, loss_fn, (X, Y)),
                           estimator=estimator, lr=0.05, interval=2, keyed_targets=True)
    elif method == "adahessian":
        optimizer = AdaHessian(model.parameters(), lr=0.05)
    else:
        from hesskit.optim.shampoo.optimizer import Shampoo

        # ε = 1e-3, not 1e-12: after 1-3 steps L and R are rank-deficient, and the inverse
        # 4th roots of their rounding-level eigenvalues would amplify float32 rounding
        optimizer = Shampoo(model.parameters(), lr=0.05, update_freq=1, eps=1e-3)
    history = []
    for _ in range(STEPS):
        if method == "adahessian":
            optimizer.step(share_loss)
        else:
            optimizer.step(closure)
        history.append(_params(model))
    return history


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=RANKS, timeout=timedelta(seconds=DEADLINE_S))
    try:
        torch.save({m: _run(m) for m in METHODS}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs():
    """(single-process histories, [rank 0 histories, rank 1 histories])."""
    with tempfile.TemporaryDirectory() as out_dir:
        with spawned_ranks(_worker, (free_port(), out_dir), RANKS, DEADLINE_S):
            single = {m: _run(m) for m in METHODS}
        ranks = [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(RANKS)]
    return single, ranks


@pytest.mark.parametrize("method", METHODS)
def test_two_half_batches_step_like_one_whole_batch(runs, method):
    single, ranks = runs
    start = _params(_model())
    assert (single[method][-1] - start).abs().max() > 1e-3  # the steps are not tiny
    for result in ranks:
        for ours, reference in zip(result[method], single[method], strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_parameters_are_bitwise_identical_across_ranks(runs, method):
    _, (first, second) = runs
    for ours, theirs in zip(first[method], second[method], strict=True):
        assert torch.equal(ours, theirs)
