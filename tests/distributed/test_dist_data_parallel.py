"""Data parallel on torch.distributed: 2 gloo processes against one process on all the data.

One spawn of two CPU processes (gloo on 127.0.0.1) computes everything below on their
shards of the data; the parent computes the same on the concatenated data, batched
differently, without a process group. Claims: products, gradients, losses, exact diagonals,
Hutch++ traces, Lanczos eigenvalues, keyed Fisher products and Hessian-free steps equal the
single-process ones (float64: 1e-10, float32: 1e-5), and HF parameters are bitwise identical
across the ranks. The ranks are killed after a deadline, so a hang fails instead of blocking.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from hesskit.distributed import sample_fraction, shard_of, shard_range
from hesskit.errors import InvalidArgumentError
from hesskit.estimators.exact_diagonal import empirical_fisher_diagonal, gauss_newton_diagonal
from hesskit.estimators.lanczos import top_eigenpairs
from hesskit.estimators.trace import hutchpp_trace
from hesskit.models import mlp
from hesskit.operators import damped, gauss_newton_operator
from hesskit.operators.fisher import fisher_operator
from hesskit.operators.hessian import hessian_operator
from hesskit.optim import HessianFree
from hesskit.optim.hessian_free.optimizer import CGSettings
from hesskit.optim.hessian_free.preconditioners import martens_preconditioner
from hesskit.problem import Problem
from spawned_ranks import free_port, spawned_ranks

RANKS = 2
DEADLINE_S = 120
NUM_SAMPLES = 9  # odd: the shards hold 5 and 4 samples
WEIGHT_DECAY = 1e-3


def _data(dtype: torch.dtype, classes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(NUM_SAMPLES, 3, generator=g, dtype=dtype)
    if classes:
        return X, torch.randint(0, 3, (NUM_SAMPLES,), generator=g)
    return X, torch.randn(NUM_SAMPLES, 2, generator=g, dtype=dtype)


def _model(dtype: torch.dtype, outputs: int = 2) -> nn.Module:
    model = mlp([3, 5, outputs], activation="tanh").to(dtype)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=g, dtype=dtype))
    return model


def _local_batches(X, Y, pieces: int):
    """This rank's shard (all data alone), cut into ``pieces`` batches."""
    X, Y = shard_of(X), shard_of(Y)
    return list(zip(X.tensor_split(pieces), Y.tensor_split(pieces), strict=True))


def _curvature_quantities(pieces: int) -> dict:
    X, Y = _data(torch.float64)
    model = _model(torch.float64)
    problem = Problem(model, nn.MSELoss(), _local_batches(X, Y, pieces))
    V = torch.randn(problem.num_params, 3, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    ggn = gauss_newton_operator(problem)
    Xc, Yc = _data(torch.float64, classes=True)
    classifier = Problem(_model(torch.float64, 3), nn.CrossEntropyLoss(),
                         _local_batches(Xc, Yc, pieces))
    fisher = fisher_operator(classifier, samples=4, seed=11)
    return {
        "num_data": problem.num_data,
        "loss": problem.total_loss(),
        "gradient": problem.gradient(),
        "ggn": ggn @ V,
        "hessian": hessian_operator(problem) @ V,
        "hutchpp": hutchpp_trace(ggn, 30, seed=5).value,
        "top_eigenvalue": top_eigenpairs(ggn, k=1, seed=6).values,
        "ggn_diagonal": gauss_newton_diagonal(problem),
        "ef_diagonal": empirical_fisher_diagonal(problem),
        "fisher": fisher.matmat(torch.randn(
            classifier.num_params, 2, generator=torch.Generator().manual_seed(4),
            dtype=torch.float64)),
    }


def _hessian_free_steps(dtype: torch.dtype, steps: int = 3) -> list[torch.Tensor]:
    X, Y = _data(dtype)
    model, loss_fn = _model(dtype), nn.MSELoss()
    Xl, Yl = shard_of(X), shard_of(Y)
    curvature_rows = shard_of(torch.arange(4))  # the first 4 samples, sharded
    share = sample_fraction(len(Xl))
    main = shard_range(NUM_SAMPLES).start == 0

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = share * loss_fn(model(Xl), Yl)
        if main:
            value = value + 0.5 * WEIGHT_DECAY * sum(p.square().sum() for p in model.parameters())
        value.backward()
        return value

    def curvature():
        problem = Problem(model, loss_fn, (X[curvature_rows], Y[curvature_rows]))
        return damped(gauss_newton_operator(problem), WEIGHT_DECAY)

    optimizer = HessianFree(
        model.parameters(), curvature=curvature, cg=CGSettings(max_iterations=20),
        preconditioner=martens_preconditioner(Problem(model, loss_fn, (Xl, Yl))),
    )
    history = []
    for _ in range(steps):
        optimizer.step(closure)
        history.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
    return history


def _training_run() -> dict:
    from hesskit.problems import make_problem
    from hesskit.training.loop import Budget, TrainConfig, train

    problem = make_problem("digits-autoencoder", seed=0, dtype=torch.float64)
    result = train(problem, TrainConfig("hf", batch_size=301, seed=0, eval_every=100),
                   Budget(iterations=2), progress=False)
    return {
        "params": torch.cat([p.detach().reshape(-1) for p in problem.model.parameters()]),
        "first_loss": result.records[1].loss,
        "first_damping": result.records[1].damping,
        "cg_iterations": [r.cg_iterations for r in result.records[1:]],
        "epochs": result.records[-1].epochs,
    }


ESTIMATING_OPTIMIZERS = ("kfac", "sophia", "adahessian", "shampoo")
"""The curvature-estimating methods that ``train`` runs data parallel (besides HF)."""


def _estimating_runs() -> dict:
    """Three steps of each of them through ``train`` on a 16-sample digits classifier."""
    from hesskit.problems import make_problem
    from hesskit.training.loop import Budget, TrainConfig, train

    runs = {}
    for name in ESTIMATING_OPTIMIZERS:
        problem = make_problem("digits-classifier", seed=0, dtype=torch.float64)
        inputs, targets = problem.train
        problem.train = (inputs[:16], targets[:16])
        result = train(problem, TrainConfig(name, batch_size=16, seed=0, eval_every=100),
                       Budget(iterations=3), progress=False)
        runs[name] = {
            "params": torch.cat([p.detach().reshape(-1) for p in problem.model.parameters()]),
            "losses": [r.loss for r in result.records[1:]],
        }
    return runs


def _compute_everything() -> dict:
    results = _curvature_quantities(pieces=2)
    results["hf64"] = _hessian_free_steps(torch.float64)
    results["hf32"] = _hessian_free_steps(torch.float32)
    results["train"] = _training_run()
    results["estimating"] = _estimating_runs()
    return results


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=RANKS, timeout=timedelta(seconds=DEADLINE_S))
    try:
        results = _compute_everything()
        X, Y = _data(torch.float64)
        local = Problem(_model(torch.float64), nn.MSELoss(), (shard_of(X), shard_of(Y)),
                        distributed=False)
        results["local_num_data"] = local.num_data
        try:
            fisher_operator(Problem(_model(torch.float64), nn.MSELoss(), (X, Y)), generator=0)
            results["fisher_without_seed_refused"] = False
        except InvalidArgumentError:
            results["fisher_without_seed_refused"] = True
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs():
    """(single-process results, [rank 0 results, rank 1 results])."""
    with tempfile.TemporaryDirectory() as out_dir:
        with spawned_ranks(_worker, (free_port(), out_dir), RANKS, DEADLINE_S):
            single = _curvature_quantities(pieces=3)
            single["hf64"] = _hessian_free_steps(torch.float64)
            single["hf32"] = _hessian_free_steps(torch.float32)
            single["train"] = _training_run()
            single["estimating"] = _estimating_runs()
        ranks = [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(RANKS)]
    return single, ranks


CURVATURE_KEYS = ("loss", "gradient", "ggn", "hessian", "hutchpp", "top_eigenvalue",
                  "ggn_diagonal", "ef_diagonal", "fisher")


@pytest.mark.parametrize("key", CURVATURE_KEYS)
def test_two_ranks_give_the_single_process_value_on_the_concatenated_data(runs, key):
    single, ranks = runs
    for result in ranks:
        assert result["num_data"] == NUM_SAMPLES
        torch.testing.assert_close(torch.as_tensor(result[key]), torch.as_tensor(single[key]),
                                   rtol=1e-10, atol=1e-10)


def test_hessian_free_steps_match_the_single_process_steps_in_float64(runs):
    single, ranks = runs
    for result in ranks:
        for ours, reference in zip(result["hf64"], single["hf64"], strict=True):
            # 1e-8: CG on the ceil(0.1 i) gap runs more iterations, amplifying rounding
            torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-8)


def test_hessian_free_steps_match_the_single_process_steps_in_float32(runs):
    single, ranks = runs
    for result in ranks:
        for ours, reference in zip(result["hf32"], single["hf32"], strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", ["hf64", "hf32"])
def test_hessian_free_parameters_are_bitwise_identical_across_ranks(runs, key):
    _, (first, second) = runs
    for ours, theirs in zip(first[key], second[key], strict=True):
        assert torch.equal(ours, theirs)


def test_hessian_free_moves_the_parameters(runs):
    single, _ = runs
    start = torch.cat([p.detach().reshape(-1) for p in _model(torch.float64).parameters()])
    assert not torch.allclose(single["hf64"][-1], start)


def test_the_training_runner_shards_batches_and_keeps_replicas_identical(runs):
    """Two HF iterations of ``train`` on the digits autoencoder (the runner's sharding of
    the gradient and curvature batches, the loss shares, the weight cost on rank 0).

    The loss at the first step is the same sum, to rounding; the parameters after two
    steps agree only to ~1e-3: the 21 CG iterations on this ill-conditioned G amplify
    rounding, and merely splitting the single-process curvature batch into two batches
    moves them by as much (checked by hand), so a tight tolerance would test rounding.
    """
    single, (first, second) = runs
    assert torch.equal(first["train"]["params"], second["train"]["params"])
    for result in (first, second):
        ours, reference = result["train"], single["train"]
        assert ours["first_loss"] == pytest.approx(reference["first_loss"], rel=1e-12)
        assert ours["first_damping"] == reference["first_damping"]
        assert ours["cg_iterations"] == reference["cg_iterations"]
        assert ours["epochs"] == reference["epochs"]
        torch.testing.assert_close(ours["params"], reference["params"], rtol=0, atol=1e-2)


@pytest.mark.parametrize("name", ESTIMATING_OPTIMIZERS)
def test_train_runs_the_curvature_estimating_methods_data_parallel(runs, name):
    """``train`` under two ranks (half the batch each) follows the single process: the same
    losses and parameters to rounding after three steps, bitwise identical replicas."""
    single, (first, second) = runs
    assert torch.equal(first["estimating"][name]["params"], second["estimating"][name]["params"])
    ours, reference = first["estimating"][name], single["estimating"][name]
    # K-FAC takes its statistics from the first τ₁ of each rank's shard of its mini-batch,
    # not of the global one: another (equally distributed) subset, so only close
    tolerance = 1e-5 if name == "kfac" else 1e-9
    assert ours["losses"] == pytest.approx(reference["losses"], rel=tolerance)
    torch.testing.assert_close(ours["params"], reference["params"], rtol=0,
                               atol=tolerance * 10)
    assert ours["losses"][-1] != ours["losses"][0]  # the method moved


def test_a_local_problem_inside_a_process_group_counts_only_its_shard(runs):
    _, ranks = runs
    assert [r["local_num_data"] for r in ranks] == [len(shard_range(NUM_SAMPLES, r, RANKS))
                                                   for r in range(RANKS)]


def test_a_distributed_fisher_needs_a_keyed_seed(runs):
    _, ranks = runs
    assert all(r["fisher_without_seed_refused"] for r in ranks)


def test_keyed_fisher_draws_do_not_depend_on_the_batching():
    X, Y = _data(torch.float64, classes=True)
    model = _model(torch.float64, 3)
    one = fisher_operator(Problem(model, nn.CrossEntropyLoss(), (X, Y)), samples=2, seed=3)
    three = fisher_operator(
        Problem(model, nn.CrossEntropyLoss(), list(zip(X.tensor_split(3), Y.tensor_split(3),
                                                       strict=True))),
        samples=2, seed=3,
    )
    torch.testing.assert_close(one.to_dense(), three.to_dense(), rtol=1e-12, atol=1e-12)
    other = fisher_operator(Problem(model, nn.CrossEntropyLoss(), (X, Y)), samples=2, seed=4)
    assert not torch.allclose(one.to_dense(), other.to_dense())


def test_distributed_true_without_a_process_group_is_refused():
    X, Y = _data(torch.float64)
    with pytest.raises(InvalidArgumentError, match="init_process_group"):
        Problem(_model(torch.float64), nn.MSELoss(), (X, Y), distributed=True)
