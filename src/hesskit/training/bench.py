"""``run_benchmark``: several optimizers on one problem, same budget, several seeds.

The protocol, step by step (it is also written into the report):

1. **Budget.** Every run gets the same budget: optimizer wall-clock seconds (evaluation
   excluded) or epoch-equivalents of data passed (every closure call counts its batch,
   every curvature-vector product the batch it is built on).
2. **Learning rates.** For each first-order method with a grid of several learning rates
   (:data:`hesskit.training.optimizers.REGISTRY`), each lr is run once, on the first seed,
   for ``tune_fraction`` of the budget; the lr with the lowest final *training* error wins
   (a diverged run scores +∞; ties go to the smaller lr; if all diverge, the smallest lr).
   The test set plays no part in the choice.
3. **Runs.** Each method then runs the full budget once per seed with its chosen lr; the
   seed sets the model's initialisation and the mini-batch order.
4. **Skips.** Damped Newton runs only when the model has at most its ``max_params``
   parameters; a method whose hesskit class is missing is skipped; both with a note.
5. **Sharing the machine.** By default methods run one after another. With ``jobs > 1``
   that many methods run at once, each in its own process on a fixed share of the
   threads; every method then sees the same (shared) machine, and the report says so.

The result is a :class:`~hesskit.report.schema.BenchmarkReport`; the final table reports
medians over seeds.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from hesskit import __version__
from hesskit.errors import InvalidArgumentError
from hesskit.finite import check_training_data
from hesskit.optim.shampoo.graft import warmup_note
from hesskit.progress import duration_text
from hesskit.report.schema import BenchmarkReport, LearningRateSelection, RunResult, Skipped
from hesskit.training.loop import Budget, TrainConfig, train
from hesskit.training.optimizers import REGISTRY, OptimizerSpec, get_optimizer_spec

BUDGET_KINDS = ("seconds", "epochs")
EVAL_POINTS = 40
"""Full train/test errors are computed each time another 1/40 of the budget is used."""


@dataclass(frozen=True)
class BenchConfig:
    """What to compare and how long.

    Attributes:
        problem: a name of :func:`hesskit.problems.make_problem`.
        optimizers: registry names, in the order the report lists them.
        budget_kind: ``"seconds"`` (optimizer wall clock) or ``"epochs"`` (data passes).
        budget_value: the budget of each run, in that unit.
        seeds: one full run per seed and method.
        tune_fraction: share of the budget each lr of a grid gets while tuning.
        data_dir: folder of user-supplied data files (MNIST, CURVES).
        jobs: methods run at the same time, each in its own process. With more than one,
            runs share the machine: give each ``threads_per_job`` threads so that together
            they do not oversubscribe the cores.
        threads_per_job: torch threads of each process when ``jobs > 1`` (``None``: this
            process's thread count divided by ``jobs``, at least 1).
        clock: how optimizer seconds are measured (``"wall"`` or ``"process"``, the CPU time
            of each run's process: :data:`hesskit.training.budget.CLOCKS`).
    """

    problem: str
    optimizers: tuple[str, ...]
    budget_kind: str
    budget_value: float
    seeds: tuple[int, ...] = (0,)
    tune_fraction: float = 0.2
    data_dir: Path | None = None
    jobs: int = 1
    threads_per_job: int | None = None
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.budget_kind not in BUDGET_KINDS:
            raise InvalidArgumentError(
                f"budget kind must be one of {', '.join(BUDGET_KINDS)}, not {self.budget_kind!r}"
            )
        if not self.optimizers:
            raise InvalidArgumentError("no optimizers to compare; pass e.g. --optimizers hf,adam")
        if not self.seeds:
            raise InvalidArgumentError("no seeds; pass e.g. --seeds 0,1,2")
        if not 0.0 < self.tune_fraction <= 1.0:
            raise InvalidArgumentError(
                f"tune fraction must be in (0, 1], not {self.tune_fraction}"
            )
        if self.jobs < 1:
            raise InvalidArgumentError(f"jobs must be at least 1, not {self.jobs}")
        if self.threads_per_job is None and self.jobs > 1:
            threads = max(1, torch.get_num_threads() // self.jobs)
            object.__setattr__(self, "threads_per_job", threads)
        for name in self.optimizers:
            if name not in REGISTRY:
                get_optimizer_spec(name)  # raises the one-line "unknown optimizer" error

    def budget(self, fraction: float = 1.0) -> Budget:
        value = fraction * self.budget_value
        return Budget(seconds=value) if self.budget_kind == "seconds" else Budget(epochs=value)


OVERHEAD_FACTOR = 1.4
"""Wall time of ``hesskit bench`` per optimizer second on the digits autoencoder: the
demo's benchmark (140 optimizer seconds) took 193 s on 2 busy cores; the rest is the
evaluations (:data:`EVAL_POINTS` per run), building each run and writing its log."""


def budget_plan(config: BenchConfig) -> str:
    """What the budget covers, and the total it adds up to, in one line for the terminal:
    the full runs (budget × seeds per method) plus the learning-rate tuning (each lr of a
    grid gets ``tune_fraction`` of the budget), with a wall-time estimate for a seconds
    budget (optimizer seconds × :data:`OVERHEAD_FACTOR`; skipped methods count too)."""
    unit = "s" if config.budget_kind == "seconds" else "epochs"
    runs = len(config.optimizers) * len(config.seeds)
    tuned = {name: len(REGISTRY[name].lr_grid) for name in config.optimizers
             if name in REGISTRY and len(REGISTRY[name].lr_grid) > 1}
    share = config.tune_fraction * config.budget_value
    total = runs * config.budget_value + sum(tuned.values()) * share
    of = "of optimizer time" if config.budget_kind == "seconds" else "of data"
    seeds = len(config.seeds)
    text = (f"budget: {config.budget_value:g} {unit} {of} per run, {runs} runs "
            f"({len(config.optimizers)} methods × {seeds} seed{'s' if seeds > 1 else ''})")
    if tuned:
        text += (f", plus lr tuning of {', '.join(tuned)} ({sum(tuned.values())} runs of "
                 f"{share:g} {unit})")
    text += f" = {total:g} {unit}"
    if config.budget_kind == "seconds":
        text += (f"; evaluations and set-up are not in the budget: expect about "
                 f"{duration_text(OVERHEAD_FACTOR * total)} in all")
    return text


def select_learning_rate(scores: Mapping[float, float]) -> float:
    """The lr with the lowest score; NaN counts as +∞, ties go to the smaller lr.

    >>> select_learning_rate({0.1: float("nan"), 0.01: 2.0, 0.001: 3.0})
    0.01
    """
    if not scores:
        raise InvalidArgumentError("no learning rates to choose from; give a non-empty grid")

    def key(lr: float) -> tuple[float, float]:
        score = scores[lr]
        return (math.inf if math.isnan(score) else score, lr)

    return min(scores, key=key)


def tune_learning_rate(
    grid: Sequence[float], final_train_error: Callable[[float], float]
) -> tuple[float, dict[float, float]]:
    """Run ``final_train_error(lr)`` for each lr of ``grid``; return the chosen lr and scores."""
    scores = {float(lr): float(final_train_error(lr)) for lr in grid}
    return select_learning_rate(scores), scores


def run_benchmark(
    config: BenchConfig, *, runs_dir: Path | None = None, progress: bool = True,
    announce: Callable[[str], None] = lambda line: None,
    on_progress: Callable[[BenchmarkReport], None] | None = None,
) -> BenchmarkReport:
    """Run the protocol of this module's docstring and return the report (not yet written).

    Args:
        config: problem, methods, budget, seeds, and how many methods run at a time.
        runs_dir: where each full run writes its ``log.jsonl`` (``<method>-seed<k>/``).
        progress: show a progress bar per run (only when methods run one at a time).
        announce: receives one line per finished tuning run and per finished full run
            (for the CLI). With ``jobs > 1`` the worker processes print those lines
            themselves (a callable does not cross the process boundary), flushed at once.
        on_progress: receives the report of the methods finished so far, each time one
            ends (the CLI writes it, so that an interrupted benchmark keeps its results).
    """
    from hesskit.problems import make_problem

    announce(budget_plan(config))
    first = make_problem(config.problem, seed=config.seeds[0], data_dir=config.data_dir)
    check_training_data(first)  # NaN in the data: named as data before any method runs
    num_params = sum(p.numel() for p in first.model.parameters())
    outcomes: dict[str, MethodOutcome] = {}
    pending: list[str] = []
    for name in config.optimizers:
        reason = _skip_reason(name, num_params)
        if reason is None:
            pending.append(name)
        else:
            outcomes[name] = MethodOutcome(skipped=Skipped(name, reason))

    def finished(name: str, outcome: MethodOutcome) -> None:
        outcomes[name] = outcome
        if on_progress is not None:
            on_progress(_report(config, first, outcomes))

    if config.jobs == 1:
        for name in pending:
            finished(name, run_method(config, name, runs_dir, progress, announce))
    else:
        _run_in_parallel(config, pending, runs_dir, finished)
    return _report(config, first, outcomes)


def _report(config: BenchConfig, first, outcomes: Mapping[str, MethodOutcome]
            ) -> BenchmarkReport:
    """The report of the methods in ``outcomes`` (all of them, or those finished so far)."""
    names = [name for name in config.optimizers if name in outcomes]
    ordered = [outcomes[name] for name in names]
    return BenchmarkReport(
        problem=config.problem,
        problem_description=first.description,
        error_name=getattr(first, "error_name", "error"),
        budget_kind=config.budget_kind,
        budget_value=config.budget_value,
        seeds=list(config.seeds),
        optimizers=names,
        runs=[run for outcome in ordered for run in outcome.runs],
        titles={name: REGISTRY[name].title for name in names},
        lr_selection=[o.selection for o in ordered if o.selection is not None],
        skipped=[o.skipped for o in ordered if o.skipped is not None],
        environment=environment(config.threads_per_job),
        method_note=protocol_note(config),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


@dataclass
class MethodOutcome:
    """What one method contributes to the report: its runs and lr choice, or why it was
    skipped."""

    runs: list[RunResult] = field(default_factory=list)
    selection: LearningRateSelection | None = None
    skipped: Skipped | None = None


def _skip_reason(name: str, num_params: int) -> str | None:
    spec = REGISTRY[name]
    if not spec.available:
        return f"{spec.title} is not available in this installation (needs {spec.requires})"
    if spec.max_params is not None and num_params > spec.max_params:
        return (f"{spec.title} skipped: the model has {num_params} parameters, more than its "
                f"limit of {spec.max_params}")
    return None


def run_method(
    config: BenchConfig, name: str, runs_dir: Path | None, progress: bool,
    announce: Callable[[str], None],
) -> MethodOutcome:
    """Steps 2 and 3 of the protocol for one method: tune its lr (if it has a grid), then
    one full run per seed; ``announce`` gets a line as each run ends."""
    from hesskit.problems import make_problem

    def problem_for(seed: int):
        return make_problem(config.problem, seed=seed, data_dir=config.data_dir)

    spec = REGISTRY[name]
    outcome = MethodOutcome()
    lr = spec.default_lr
    if len(spec.lr_grid) > 1:
        lr, outcome.selection = _tune(config, name, problem_for, progress, announce)
        announce(f"{spec.title}: learning rate {lr:g} chosen from {list(spec.lr_grid)}")
    for seed in config.seeds:
        folder = None if runs_dir is None else Path(runs_dir) / f"{name}-seed{seed}"
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        run = train(
            problem_for(seed),
            TrainConfig(name, lr=lr, seed=seed, eval_every=10**9, eval_points=EVAL_POINTS,
                        clock=config.clock),
            config.budget(), out_dir=folder, progress=progress,
        ).for_report()
        outcome.runs.append(run)
        announce(f"{spec.title} seed {seed}: train error {run.final_train_error:.4g}, "
                 f"test error {run.final_test_error:.4g}")
        note = run_note(spec, run)
        if note is not None:
            announce(f"note: {note}")
    return outcome


def run_note(spec: OptimizerSpec, run: RunResult) -> str | None:
    """What a reader must know to read the run: for Shampoo, that a run no longer than its
    warm-up took only its graft's (Adam's) steps (:func:`warmup_note`)."""
    steps = run.records[-1].iteration if run.records else 0
    return warmup_note(spec.title, steps, spec.warmup_steps)


def _print_now(line: str) -> None:
    """A worker process's announcement: printed and flushed at once, so that lines from
    several workers appear as the runs end."""
    print(line, flush=True)


def _run_in_parallel(
    config: BenchConfig, names: Sequence[str], runs_dir: Path | None,
    finished: Callable[[str, MethodOutcome], None],
) -> None:
    """``config.jobs`` methods at a time, each in its own process on
    ``config.threads_per_job`` torch threads (no progress bars: they would interleave).

    Processes, not threads: torch's intra-op pool is per process, and a fresh ``spawn``
    process gives each method its own pool of a known size."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(
        max_workers=config.jobs, mp_context=multiprocessing.get_context("spawn"),
        initializer=_limit_threads, initargs=(config.threads_per_job,),
    ) as pool:
        futures = {pool.submit(run_method, config, name, runs_dir, False, _print_now): name
                   for name in names}
        for future in as_completed(futures):
            finished(futures[future], future.result())


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _tune(config: BenchConfig, name: str, problem_for, progress: bool,
          announce: Callable[[str], None]):
    spec = REGISTRY[name]
    seed = config.seeds[0]

    def final_train_error(lr: float) -> float:
        result = train(problem_for(seed), TrainConfig(name, lr=lr, seed=seed, eval_every=10**9,
                                                     clock=config.clock),
                       config.budget(config.tune_fraction), progress=progress)
        announce(f"{spec.title} tuning, lr {lr:g}: train error {result.final_train_error:.4g}")
        return result.final_train_error

    chosen, scores = tune_learning_rate(spec.lr_grid, final_train_error)
    return chosen, LearningRateSelection(
        optimizer=name, grid=list(spec.lr_grid), scores={f"{lr:g}": s for lr, s in scores.items()},
        chosen=chosen, tuning_budget=config.tune_fraction * config.budget_value, tuning_seed=seed,
    )


def protocol_note(config: BenchConfig) -> str:
    """The protocol in two sentences, with this benchmark's numbers."""
    clock = "wall-clock time" if config.clock == "wall" else "CPU time (its process's)"
    unit = f"s of optimizer {clock}" if config.budget_kind == "seconds" else "epochs"
    return (
        f"Each run gets {config.budget_value:g} {unit} (error evaluation excluded). "
        f"First-order learning rates are chosen per method from its grid by the lowest final "
        f"training error after {config.tune_fraction * config.budget_value:g} {unit} on seed "
        f"{config.seeds[0]}; each method then runs the full budget on seeds "
        f"{', '.join(map(str, config.seeds))}, and the table reports medians over seeds."
        + ("" if config.jobs == 1 else
           f" {config.jobs} methods ran at a time, each in its own process on "
           f"{config.threads_per_job} torch thread(s), sharing the machine.")
    )


def environment(threads: int | None = None) -> dict[str, str]:
    """Versions and thread counts (``threads``: each run's, when not this process's), so
    that timings can be compared fairly."""
    return {
        "hesskit": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(threads or torch.get_num_threads()),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
