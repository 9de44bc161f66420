"""Benchmark protocol: learning-rate selection, skips, and the report it produces."""

from __future__ import annotations

import math

import pytest
import torch

from hesskit.errors import InvalidArgumentError
from hesskit.training.bench import (
    BenchConfig,
    budget_plan,
    run_benchmark,
    run_note,
    select_learning_rate,
    tune_learning_rate,
)
from hesskit.training.optimizers import REGISTRY


def test_selection_takes_the_lowest_score_with_nan_as_worst_and_ties_to_smaller_lr():
    assert select_learning_rate({1e-3: 2.0, 1e-2: 1.0, 1e-1: math.nan}) == 1e-2
    assert select_learning_rate({1e-3: 1.0, 1e-2: 1.0}) == 1e-3
    assert select_learning_rate({1e-2: math.inf, 1e-1: math.nan}) == 1e-2
    with pytest.raises(InvalidArgumentError, match="no learning rates"):
        select_learning_rate({})


def test_tuning_picks_the_grid_lr_closest_to_the_optimal_step_on_a_quadratic():
    """Gradient descent on ½·a·w² contracts w by |1 − lr·a| per step, so after k steps the
    best lr of the grid is the one with the smallest |1 − lr·a| (here a = 40: lr 0.03)."""
    a, steps = 40.0, 10

    def final_error(lr):
        w = torch.tensor([1.0], requires_grad=True)
        optimizer = torch.optim.SGD([w], lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            (0.5 * a * w**2).sum().backward()
            optimizer.step()
        return float(0.5 * a * w.detach() ** 2)

    grid = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    chosen, scores = tune_learning_rate(grid, final_error)
    assert chosen == min(grid, key=lambda lr: abs(1 - lr * a))  # == 0.03
    assert scores[0.1] == pytest.approx(0.5 * a * 3.0 ** (2 * steps))  # |1 − 4| = 3: diverges


def test_config_rejects_unknown_optimizer_and_budget_kind():
    with pytest.raises(InvalidArgumentError, match="unknown optimizer 'adamw'"):
        BenchConfig("digits-autoencoder", ("adam", "adamw"), "seconds", 1.0)
    with pytest.raises(InvalidArgumentError, match="budget kind"):
        BenchConfig("digits-autoencoder", ("adam",), "steps", 1.0)
    with pytest.raises(InvalidArgumentError, match="jobs must be at least 1"):
        BenchConfig("digits-autoencoder", ("adam",), "epochs", 1.0, jobs=0)


def test_small_benchmark_tunes_first_order_lrs_and_skips_newton_on_a_large_model(tmp_path):
    config = BenchConfig("digits-classifier", ("newton", "adam", "lbfgs"), "epochs", 0.2,
                         seeds=(0, 1), tune_fraction=0.5)
    lines: list[str] = []
    report = run_benchmark(config, runs_dir=tmp_path, progress=False, announce=lines.append)
    assert [s.optimizer for s in report.skipped] == ["newton"]
    grid = REGISTRY["adam"].lr_grid
    plan = lines.pop(0)  # what the budget covers: 6 runs of 0.2, 5 tuning runs of 0.1
    assert plan == ("budget: 0.2 epochs of data per run, 6 runs (3 methods × 2 seeds), plus "
                    "lr tuning of adam (5 runs of 0.1 epochs) = 1.7 epochs")
    assert lines[:len(grid)] == [
        f"Adam tuning, lr {lr:g}: train error {report.lr_selection[0].scores[f'{lr:g}']:.4g}"
        for lr in grid]
    assert [line.split(":")[0] for line in lines[len(grid):]] == [
        "Adam", "Adam seed 0", "Adam seed 1", "L-BFGS seed 0", "L-BFGS seed 1"]
    assert "3466 parameters" in report.skipped[0].reason  # 64·32+32 + 32·32+32 + 32·10+10
    (adam,) = report.lr_selection  # L-BFGS has a single lr: nothing to tune
    assert adam.chosen == select_learning_rate({float(k): v for k, v in adam.scores.items()})
    assert [(r.optimizer, r.seed) for r in report.runs] == [
        ("adam", 0), ("adam", 1), ("lbfgs", 0), ("lbfgs", 1)]
    assert all(r.lr == adam.chosen for r in report.runs if r.optimizer == "adam")
    assert all(r.records[-1].epochs >= 0.2 for r in report.runs)
    assert (tmp_path / "adam-seed1" / "log.jsonl").is_file()


def test_methods_run_in_parallel_processes_give_the_same_report_as_one_after_another(
    tmp_path, capfd
):
    """An epoch budget makes each run a fixed sequence of steps, so running the methods in
    two worker processes (1 thread each) must reproduce the sequential runs up to float
    rounding, keep the report's method order, and say that the machine was shared."""
    common = dict(problem="digits-classifier", optimizers=("newton", "sgd", "lbfgs"),
                  budget_kind="epochs", budget_value=0.3, tune_fraction=0.5)
    sequential = run_benchmark(BenchConfig(**common), progress=False)
    parallel = run_benchmark(BenchConfig(**common, jobs=2), runs_dir=tmp_path, progress=False)
    assert [r.optimizer for r in parallel.runs] == [r.optimizer for r in sequential.runs] == [
        "sgd", "lbfgs"]
    assert [s.optimizer for s in parallel.skipped] == ["newton"]
    assert parallel.lr_selection[0].chosen == sequential.lr_selection[0].chosen
    for one, other in zip(parallel.runs, sequential.runs, strict=True):
        assert len(one.records) == len(other.records)
        assert one.final_train_error == pytest.approx(other.final_train_error, rel=1e-4)
    assert parallel.environment["torch_threads"] == str(max(1, torch.get_num_threads() // 2))
    assert "2 methods ran at a time" in parallel.method_note
    assert "ran at a time" not in sequential.method_note
    assert (tmp_path / "lbfgs-seed0" / "log.jsonl").is_file()
    printed = capfd.readouterr().out.splitlines()  # the workers print as their runs end
    assert sum(line.startswith("SGD (Nesterov) tuning, lr") for line in printed) == len(
        REGISTRY["sgd"].lr_grid)
    assert any(line.startswith("L-BFGS seed 0: train error") for line in printed)


def test_budget_plan_says_what_a_seconds_budget_covers_and_the_wall_time_to_expect():
    config = BenchConfig("digits-autoencoder", ("hf", "rmsprop", "adam", "sgd"), "seconds",
                         20.0)
    # 4 full runs of 20 s and 3 × 5 tuning runs of 4 s: 140 optimizer seconds, × 1.4
    assert budget_plan(config) == (
        "budget: 20 s of optimizer time per run, 4 runs (4 methods × 1 seed), plus lr tuning "
        "of rmsprop, adam, sgd (15 runs of 4 s) = 140 s; evaluations and set-up are not in "
        "the budget: expect about 3 min in all")


def test_a_shampoo_run_shorter_than_its_warmup_gets_a_note_and_adam_none():
    from hesskit.report.schema import IterationRecord, RunResult

    def run_of(steps: int) -> RunResult:
        record = IterationRecord(iteration=steps, wall_time=1.0, epochs=1.0, products=0,
                                 loss=1.0, train_error=1.0, test_error=1.0)
        return RunResult("shampoo", 0, 1e-3, 32, "budget", [record], 1.0, 1.0)

    shampoo = REGISTRY["shampoo"]
    assert shampoo.warmup_steps == 99
    assert "all in its warm-up" in run_note(shampoo, run_of(40))
    assert run_note(shampoo, run_of(100)) is None
    assert run_note(REGISTRY["adam"], run_of(40)) is None
