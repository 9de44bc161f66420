"""The runs of the preconditioner analysis: each optimizer of the training registry (or any
factory) trained from the same start on the same mini-batches, measured every k steps.

Every optimizer starts from the same parameters and sees the same mini-batches (a seeded
:class:`~hesskit.training.batch_sampler.BatchSampler`), K-FAC included (its own batch
schedule then takes the whole mini-batch, m₁ = 1000 exceeding it). The optimizers come
from the training registry (:mod:`hesskit.training.optimizers`). What is measured at a
record, and its mathematics: :mod:`hesskit.analysis.preconditioner`
(:func:`~hesskit.analysis.preconditioner.record_step`); this module only trains. A run
that never leaves an optimizer's warm-up (Shampoo before ``start_preconditioning_step``:
its graft's steps) carries a note saying so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from hesskit.analysis.preconditioner import AnalysisSettings, record_step
from hesskit.analysis.preconditioner_adapters import has_preconditioner
from hesskit.analysis.preconditioner_records import (
    OptimizerRun,
    PreconditionerAnalysis,
    StepRecord,
)
from hesskit.errors import InvalidArgumentError, NonFiniteError
from hesskit.optim.shampoo.graft import warmup_note
from hesskit.tensor_tree import num_samples, select
from hesskit.training.batch_sampler import BatchSampler
from hesskit.training.loop import TrainingProblem, objective
from hesskit.training.optimizers import OptimizerContext, ProductCounter, get_optimizer_spec


@dataclass(frozen=True)
class OptimizerChoice:
    """An optimizer to analyse: a factory from the training registry's context.

    Attributes:
        name: its name in the results (a registry name for :meth:`from_registry`).
        title: its name in reports.
        build: context → optimizer (as :class:`~hesskit.training.optimizers.OptimizerSpec`).
        lr: the learning rate passed in the context.
        takes_loss_closure: ``step(closure, loss_closure=...)`` as the training loop calls it.
    """

    name: str
    title: str
    build: Callable[[OptimizerContext], torch.optim.Optimizer]
    lr: float | None
    takes_loss_closure: bool = False

    @classmethod
    def from_registry(cls, name: str, lr: float | None = None) -> OptimizerChoice:
        """The registry's ``name`` at ``lr`` (default: its default lr)."""
        spec = get_optimizer_spec(name)
        return cls(spec.name, spec.title, spec.build,
                   spec.default_lr if lr is None else lr, spec.takes_loss_closure)


def preconditioner_analysis(
    problem: TrainingProblem,
    optimizers: Sequence[OptimizerChoice | str],
    *,
    steps: int = 200,
    every: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    settings: AnalysisSettings | None = None,
    on_record: Callable[[str, int], None] | None = None,
    on_progress: Callable[[PreconditionerAnalysis, str, int], None] | None = None,
) -> PreconditionerAnalysis:
    """Train ``problem.model`` with each optimizer from the same start and measure P
    against G every ``every`` steps (module docstring). The model ends at its initial
    parameters.

    Args:
        problem: model, loss, training data ``train`` and ``weight_decay`` (a
            ``hesskit.problems.BenchmarkProblem`` or any :class:`TrainingProblem`).
        optimizers: registry names (at their default lr) or :class:`OptimizerChoice`.
        steps, every: steps per run T ≥ 1; record every k ≥ 1 steps and at step T.
        batch_size: the mini-batch every optimizer steps on (≤ the training set).
        seed: seeds the batch order and torch's generator (the registry's seeds).
        settings: :class:`AnalysisSettings`.
        on_record: called with (optimizer name, step) after each record.
        on_progress: called with (the analysis so far, optimizer name, step) after each
            record; the analysis then holds every record made, the current run's included
            (to write partial results as they come).

    Raises:
        InvalidArgumentError: a bad count, or an optimizer without a preconditioner adapter
            (before any training).
        NonFiniteError: a run diverged (lower its lr).
    """
    settings = settings or AnalysisSettings()
    if steps < 1 or every < 1 or batch_size < 1:
        raise InvalidArgumentError(f"steps ({steps}), every ({every}) and batch_size "
                                   f"({batch_size}) must be at least 1")
    choices = [OptimizerChoice.from_registry(c) if isinstance(c, str) else c
               for c in optimizers]
    if not choices:
        raise InvalidArgumentError("no optimizers to analyse; pass at least one name")
    model = problem.model
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    analysis = PreconditionerAnalysis(
        getattr(problem, "name", type(model).__name__), steps, every,
        min(batch_size, num_samples(problem.train[0])), seed, asdict(settings))
    try:
        runs = [_Run(problem, choice, batch_size, seed) for choice in choices]  # checks all
        for run in runs:
            model.load_state_dict(initial)
            run.analyse(steps, every, settings, analysis, on_record, on_progress)
    finally:
        model.load_state_dict(initial)
    return analysis


class _Run:
    """One optimizer's run: its context, sampler, closures and records."""

    def __init__(self, problem: TrainingProblem, choice: OptimizerChoice, batch_size: int,
                 seed: int) -> None:
        self.problem, self.choice, self.seed = problem, choice, seed
        self.num_train = num_samples(problem.train[0])
        self.batch_size = min(batch_size, self.num_train)
        self.batch = select(problem.train, slice(0, 0))
        self.context = OptimizerContext(
            model=problem.model, loss=problem.loss, weight_decay=problem.weight_decay,
            lr=choice.lr, gradient_batch=lambda: self.batch,
            curvature_batch=lambda: select(self.batch, slice(0, max(1, self.batch_size // 10))),
            products=ProductCounter())
        torch.manual_seed(seed)
        self.optimizer = choice.build(self.context)
        if not has_preconditioner(self.optimizer):
            raise InvalidArgumentError(
                f"{choice.name}: no preconditioner adapter for "
                f"{type(self.optimizer).__name__}; choose sgd, rmsprop, adam, adahessian, "
                "sophia, sophia-h, kfac or shampoo"
            )
        ids = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        self.names = [n for n, p in problem.model.named_parameters() if id(p) in ids]
        named = dict(problem.model.named_parameters())
        self.params = [named[n] for n in self.names]

    def loss_closure(self) -> Tensor:
        return objective(self.problem, *self.batch)

    def closure(self) -> Tensor:
        self.optimizer.zero_grad()
        value = self.loss_closure()
        value.backward()
        return value

    def analyse(self, steps: int, every: int, settings: AnalysisSettings,
                analysis: PreconditionerAnalysis,
                on_record: Callable[[str, int], None] | None,
                on_progress: Callable[[PreconditionerAnalysis, str, int], None] | None,
                ) -> OptimizerRun:
        """Train and record; the run is appended to ``analysis.runs`` before its first step,
        so that its records are in ``analysis`` as they are made."""
        torch.manual_seed(self.seed)
        sampler = BatchSampler(self.num_train, self.batch_size, self.seed)
        choice = self.choice
        run = OptimizerRun(choice.name, choice.title, choice.lr, "", "",
                           note=self.warmup(steps))
        analysis.runs.append(run)
        for step in range(1, steps + 1):
            self.batch = select(self.problem.train, sampler.next())
            before = [p.detach().clone() for p in self.params]
            if choice.takes_loss_closure:
                loss = self.optimizer.step(self.closure, loss_closure=self.loss_closure)
            else:
                loss = self.optimizer.step(self.closure)
            loss = float(torch.as_tensor(loss).detach()) if loss is not None else math.nan
            if not math.isfinite(loss):
                raise NonFiniteError(f"{choice.name} diverged at step {step} (objective "
                                     f"{loss}); lower its lr (now {choice.lr})")
            if step % every == 0 or step == steps:
                run.records.append(self.record(step, loss, before, settings, run))
                if on_record is not None:
                    on_record(choice.name, step)
                if on_progress is not None:
                    on_progress(analysis, choice.name, step)
        return run

    def warmup(self, steps: int) -> str:
        """The note for an optimizer that spent the whole run in its warm-up (Shampoo's
        steps before ``start_preconditioning_step`` are its graft's), else ``""``."""
        warmup_steps = int(getattr(self.optimizer, "warmup_steps", 0))
        return warmup_note(self.choice.title, steps, warmup_steps) or ""

    def record(self, step: int, loss: float, before: list[Tensor],
               settings: AnalysisSettings, run: OptimizerRun) -> StepRecord:
        record, P = record_step(self.problem.model, self.problem.loss,
                                self.problem.weight_decay, self.batch, step, loss,
                                self.optimizer, self.names, before, settings)
        run.preconditioner, run.kind = P.description, P.kind.value
        return record


__all__ = ["OptimizerChoice", "preconditioner_analysis"]
