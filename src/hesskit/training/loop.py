"""``train``: run one optimizer on one problem under a budget, logging every iteration.

The objective is Martens' (2010, §4): the problem's loss on a mini-batch plus the L2 cost
(wd/2)‖θ‖² (weight decay as part of the objective, not decoupled), so every optimizer,
first- or second-order, minimises the same function. Each iteration draws a mini-batch
(a seeded permutation per epoch), calls ``optimizer.step(closure)`` and appends one
record to ``log.jsonl`` (see :mod:`hesskit.report.schema`). Reported errors come from the
problem's ``error_fn`` on the full training and test sets, every ``eval_every`` iterations
and at the last one; their cost is excluded from the logged wall time.

Exact resume: with ``checkpoint_every`` the run writes an atomic checkpoint (see
:mod:`hesskit.training.checkpoint`); ``resume=True`` restores it, truncates the log to
that iteration and continues. On CPU with fixed seeds, a run stopped and resumed ends with
parameters bit-identical to an uninterrupted one: nothing the next step reads (parameters,
optimizer state, sampler, RNGs) lives outside the checkpoint.

Data parallel (``hesskit.training.data_parallel``): inside a ``torch.distributed`` process
group (``torchrun -m hesskit train ...``) every rank draws the same global mini-batch (same
seed) and works on its ``shard_range`` of it, and on its share of the curvature batch; the
closure returns the rank's share of the objective (the weight cost on rank 0 only) and the
optimizer sums over the ranks, so the run follows the single-process one on the same
batches. Only rank 0 writes the log and checkpoints and shows the progress bar; the time
budget uses the slowest rank's time, so that all ranks stop at the same iteration.

Curvature tracking (``config.curvature``): see :mod:`hesskit.training.curvature_tracking`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from hesskit.distributed import broadcast_, max_over_ranks, rank, shard_of, world_size
from hesskit.errors import InvalidArgumentError
from hesskit.losses import as_loss
from hesskit.optim.weight_cost import weight_cost
from hesskit.report.schema import IterationRecord, RunHeader, RunResult
from hesskit.run_folder import refuse_existing_run
from hesskit.tensor_tree import call_model, num_samples, select
from hesskit.training.batch_sampler import BatchSampler
from hesskit.training.budget import Budget, clock, passed_mark
from hesskit.training.checkpoint import (
    CHECKPOINT_NAME,
    RUN_FILES,
    RunLog,
    capture_rng_state,
    read_log_records,
    save_checkpoint,
    seed_global_generators,
)
from hesskit.training.checkpoint_checks import load_trusted_checkpoint
from hesskit.training.curvature_tracking import CurvatureTracker, CurvatureTracking, resume_tracking
from hesskit.training.data_parallel import check_data_parallel
from hesskit.training.optimizers import OptimizerContext, ProductCounter, get_optimizer_spec
from hesskit.training.progress_bar import RunProgressBar


class TrainingProblem(Protocol):
    """What ``train`` needs from a problem (``hesskit.problems.BenchmarkProblem`` has it)."""

    name: str
    model: nn.Module
    loss: nn.Module
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    weight_decay: float

    def error_fn(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> float: ...


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the budget aside).

    Attributes:
        optimizer: a registry name (:data:`hesskit.training.optimizers.REGISTRY`).
        lr: learning rate; ``None`` takes the optimizer's default.
        batch_size: gradient mini-batch size; ``None`` takes the optimizer's default
            (the full training set for L-BFGS, HF and Newton; 128 otherwise).
        seed: seeds the mini-batch order and torch's global generator.
        eval_every: compute the full train and test errors every this many iterations.
        eval_points: also evaluate each time another 1/eval_points of the budget is used
            (``None``: only by ``eval_every``); gives evenly spread points on time plots.
        checkpoint_every: write a checkpoint every this many iterations (``None``: only at
            the end, when ``out_dir`` is given).
        curvature_fraction: share of the gradient batch used as HF's curvature batch (its
            size; Hessian-free cycles round-robin chunks of that size through the batch).
            ``None``: 1/numchunks for a problem with Martens' ``hf_numchunks`` (CURVES 4,
            MNIST 8; HFDemo ``nnet_train_2.m`` ``numchunks``), else
            :data:`DEFAULT_CURVATURE_FRACTION`.
        initial_damping: λ at Hessian-free's first step; ``None`` takes the problem's
            ``hf_initial_damping`` (45, Martens' ``initlambda``, for every named problem).
        clock: how optimizer seconds are measured, ``"wall"`` or ``"process"`` (CPU time
            of this process; :data:`hesskit.training.budget.CLOCKS`).
        curvature: what curvature to track along the run (``None``: none).
    """

    optimizer: str
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0
    eval_every: int = 10
    eval_points: int | None = None
    checkpoint_every: int | None = None
    curvature_fraction: float | None = None
    initial_damping: float | None = None
    clock: str = "wall"
    curvature: CurvatureTracking | None = None


CLOCK_NOTES = {"wall": "elapsed seconds", "process": "CPU seconds of the training process"}

DEFAULT_BATCH_SIZE = 128
DEFAULT_CURVATURE_FRACTION = 0.1
"""The curvature batch of a problem without Martens' ``numchunks``: 1/10 of the gradient
batch (Martens 2010 §4.3 computes the curvature on a mini-batch, a fraction of the data)."""


def curvature_fraction(config: TrainConfig, problem: TrainingProblem) -> float:
    """The share of the gradient batch in HF's curvature batch: the configured one, else
    1/``problem.hf_numchunks`` (Martens' chunks), else :data:`DEFAULT_CURVATURE_FRACTION`."""
    if config.curvature_fraction is not None:
        return config.curvature_fraction
    numchunks = getattr(problem, "hf_numchunks", None)
    return 1.0 / numchunks if numchunks else DEFAULT_CURVATURE_FRACTION


def objective(
    problem: TrainingProblem, inputs: Tensor, targets: Tensor, *, share: float = 1.0,
    penalty: bool = True,
) -> Tensor:
    """ℓ(f(θ, X), y) + (wd/2)‖θ‖², the function every optimizer minimises.

    Data parallel, a rank's share of it: ``share`` · ℓ on its shard (share = its weight in
    the batch's reduction) plus the weight cost when ``penalty`` (rank 0 only).
    """
    value = problem.loss(call_model(problem.model, inputs), targets)
    if share != 1.0:
        value = value * share
    if problem.weight_decay and penalty:
        value = value + weight_cost(problem.model.parameters(), problem.weight_decay)
    return value


def train(
    problem: TrainingProblem,
    config: TrainConfig,
    budget: Budget,
    *,
    out_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train ``problem.model`` in place with ``config.optimizer`` until ``budget`` is used.

    Args:
        problem: model, loss, data, weight decay and ``error_fn``.
        config: optimizer, lr, batch size, seed, evaluation and checkpoint cadence.
        budget: iterations, optimizer seconds and/or epochs (whichever comes first).
        out_dir: folder for ``log.jsonl`` and ``checkpoint.pt`` (``None``: keep in memory).
        resume: continue from ``out_dir/checkpoint.pt``.
        progress: show a rich progress bar.

    Returns:
        The run's records; ``diverged`` is set (and errors are ``inf``) when the objective
        became NaN or infinite.

    Raises:
        InvalidArgumentError: unknown optimizer, a bad setting, or a checkpoint made with
            different settings.
    """
    if resume and out_dir is None:
        raise InvalidArgumentError("resume needs the output folder of the run (--out)")
    if not resume and out_dir is not None and rank() == 0:
        refuse_existing_run(out_dir, RUN_FILES, resume_hint="--resume")
    run = _Run(problem, config, None if out_dir is None else Path(out_dir))
    if resume:
        run.restore()
    else:
        run.start()
    stopped_by = budget.exhausted_by(*run.used())
    title = f"{problem.name} · {run.spec.name}"
    with RunProgressBar(title, enabled=progress and run.is_main) as bar:
        while stopped_by is None:
            previous = budget.fraction(*run.used())
            loss = run.step()
            stopped_by = "diverged" if not math.isfinite(loss) else budget.exhausted_by(
                *run.used())
            fraction = budget.fraction(*run.used())
            evaluate = (stopped_by is not None or run.counters["iteration"] % config.eval_every == 0
                        or passed_mark(fraction, previous, config.eval_points))
            bar.update(fraction, run.log_step(loss, evaluate))
            if run.tracker is not None and stopped_by != "diverged":
                run.tracker.after_step(run.counters["iteration"], run.optimizer)
            every = config.checkpoint_every
            if stopped_by is not None or (every and run.counters["iteration"] % every == 0):
                run.save()
    if run.tracker is not None:
        run.tracker.finish()
    return run.result(stopped_by)


class _Run:
    """One run's moving parts: optimizer, sampler, counters and log; each phase a method."""

    def __init__(self, problem: TrainingProblem, config: TrainConfig, out_dir: Path | None):
        self.problem, self.config, self.out_dir = problem, config, out_dir
        self.spec = spec = get_optimizer_spec(config.optimizer)
        self.clock = clock(config.clock)
        if config.eval_every < 1:
            raise InvalidArgumentError(f"eval_every must be at least 1, not {config.eval_every}")
        num_params = sum(p.numel() for p in problem.model.parameters())
        if spec.max_params is not None and num_params > spec.max_params:
            raise InvalidArgumentError(
                f"{spec.title} is limited to {spec.max_params} parameters and this model has "
                f"{num_params}; use hf instead"
            )
        self.num_train = num_train = num_samples(problem.train[0])
        self.lr = config.lr if config.lr is not None else spec.default_lr
        batch_size = config.batch_size or (num_train if spec.full_batch else DEFAULT_BATCH_SIZE)
        self.batch_size = min(batch_size, num_train)
        self.ranks, self.is_main = world_size(), rank() == 0
        if self.ranks > 1:
            check_data_parallel(spec.name, self.batch_size, self.ranks, config.curvature)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        seed_global_generators(config.seed)
        self.sampler = BatchSampler(num_train, self.batch_size, config.seed)
        self.batch: tuple[Tensor, Tensor] = select(problem.train, slice(0, 0))
        fraction = curvature_fraction(config, problem)  # 1/numchunks: Martens' chunks
        self.curvature_size = max(1, math.ceil(fraction * self.batch_size))
        self.curvature_shard, self.global_batch_size = self.batch, 0
        self.context = OptimizerContext(
            model=problem.model, loss=problem.loss, weight_decay=problem.weight_decay,
            lr=self.lr, gradient_batch=lambda: self.batch, curvature_batch=self.curvature_batch,
            products=ProductCounter(),
            initial_damping=(config.initial_damping if config.initial_damping is not None
                             else getattr(problem, "hf_initial_damping", 1.0)),
        )
        self.optimizer = spec.build(self.context)
        self.header = RunHeader(
            problem=problem.name, optimizer=spec.name, seed=config.seed,
            batch_size=self.batch_size, num_train=num_train, eval_every=config.eval_every,
            lr=self.lr, weight_decay=problem.weight_decay,
            note=(f"train_error and test_error are evaluated every {config.eval_every} "
                  "iterations and at the last one (null elsewhere); wall_time "
                  f"({CLOCK_NOTES.get(config.clock, config.clock)}) excludes "
                  "evaluation and checkpoints; epochs count the cases of every closure call and "
                  "of every curvature-vector product"),
        )
        self.log = RunLog(out_dir if self.is_main else None, self.header)
        self.counters = {"iteration": 0, "wall_time": 0.0, "samples": 0}
        self.cg_before: int | None = None
        self.tracker = CurvatureTracker.for_run(config.curvature, problem, config.seed,
                                                out_dir if self.is_main else None)

    def curvature_batch(self) -> tuple[Tensor, Tensor]:
        """The first rows of the gradient batch (data parallel: this rank's shard of them)."""
        if self.ranks > 1:
            return self.curvature_shard
        return select(self.batch, slice(0, self.curvature_size))

    def used(self) -> tuple[int, float, float]:
        """(iterations, optimizer seconds, epochs) so far: what the budget counts.

        Epochs are cases processed / training-set size: every closure call processes its
        gradient batch, and every curvature-vector product one pass over the batch it is
        built on (a Gauss-Newton product costs about 1.3 gradients on that batch; see
        ``benchmarks/products.py``), so second-order methods are charged for their inner
        work, not only for their gradients. Hessian-free's preconditioner pass is charged
        only where it is one (``damped_builders.build_hessian_free``). Stochastic HF
        draws its own batches: its exact case count ``hf_state["cases"]`` (gradients, trial
        points, curvature products and ρ's chunk losses) reaches the counter in units of
        the curvature batch, so its epochs are exact to within one curvature batch
        (``tests/training/test_loop_cases.py``).
        """
        c = self.counters
        product_cases = (self.curvature_size if self.spec.products_on_curvature_batch
                         else self.batch_size)
        cases = c["samples"] + self.context.products.count * product_cases
        return c["iteration"], c["wall_time"], cases / self.num_train

    def start(self) -> None:
        broadcast_(list(self.problem.model.parameters()))  # identical replicas (no-op alone)
        self.log.start(self._record(None, evaluate=True))
        if self.tracker is not None:
            self.tracker.start()
            self.tracker.after_step(0, self.optimizer)

    def restore(self) -> None:
        """Read and check the checkpoint (checksum, settings, schema, finite values) before
        anything is loaded or written; then load it."""
        saved = load_trusted_checkpoint(
            self.out_dir / CHECKPOINT_NAME, header=asdict(self.header), model=self.problem.model,
            optimizer=self.optimizer, optimizer_name=self.spec.name, sampler=self.sampler,
            announce=self.is_main)
        self.context.products.count = saved["products"]
        self.counters = saved["counters"]
        resume_tracking(self.tracker, saved.get("curvature"))
        snapshot = saved.get("log")
        if self.is_main:
            note = self.log.resume(saved["log_bytes"], snapshot)
            if note is not None:
                print(f"hesskit: note: {note}", file=sys.stderr, flush=True)
        else:
            self.log.records = read_log_records(self.out_dir, saved["log_bytes"], snapshot)

    def save(self) -> None:
        """The log made durable first (fsync), then the checkpoint that refers to it."""
        if self.out_dir is None or not self.is_main:
            return
        self.log.sync()
        save_checkpoint({
            "header": asdict(self.header), "model": self.problem.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "sampler": self.sampler.state_dict(),
            "rng": capture_rng_state(), "products": self.context.products.count,
            "counters": dict(self.counters), "log_bytes": self.log.size(),
            "log": self.log.snapshot(),
            **({} if self.tracker is None else {"curvature": self.tracker.state_dict()}),
        }, self.out_dir / CHECKPOINT_NAME)

    def closure(self) -> Tensor:
        """The objective on the current batch, with its gradient (called ≥ 1 time a step)."""
        self.optimizer.zero_grad()
        value = self.loss_closure()
        value.backward()
        return value

    def loss_closure(self) -> Tensor:
        """The objective on the current batch without ``backward()``: the closure's forward
        half, and what the second-order optimizers evaluate trial points with (under
        ``torch.no_grad()``, a forward pass instead of a gradient)."""
        self.counters["samples"] += self.global_batch_size
        share = 1.0  # data parallel: this rank's weight in the batch's reduction
        if self.ranks > 1:
            share = as_loss(self.problem.loss).batch_weight(num_samples(self.batch[0]),
                                                            self.global_batch_size)
        return objective(self.problem, *self.batch, share=share, penalty=self.is_main)

    def step(self) -> float:
        """Draw a batch, take one optimizer step (timed); return the loss it reports."""
        indices = self.sampler.next()
        self.global_batch_size = len(indices)
        train = self.problem.train  # (inputs, targets), each a tensor or a tuple / dict
        if self.ranks > 1:  # this rank's shard of the batch and of the curvature batch
            self.curvature_shard = select(train, shard_of(indices[: self.curvature_size]))
            indices = shard_of(indices)
        self.batch = select(train, indices)
        self.cg_before = self.spec.diagnostics(self.optimizer).cg_iterations_total
        started = self.clock()
        if self.spec.takes_loss_closure:
            loss = self.optimizer.step(self.closure, loss_closure=self.loss_closure)
        else:
            loss = self.optimizer.step(self.closure)
        loss = float(torch.as_tensor(loss).detach())
        self.counters["wall_time"] += max_over_ranks(self.clock() - started)
        self.counters["iteration"] += 1
        return loss

    def log_step(self, loss: float, evaluate: bool) -> IterationRecord:
        record = self._record(loss, evaluate=evaluate)
        self.log.append(record)
        return record

    def _record(self, loss: float | None, *, evaluate: bool) -> IterationRecord:
        iteration, seconds, epochs = self.used()
        after = self.spec.diagnostics(self.optimizer)
        cg = after.cg_iterations_total
        record = IterationRecord(
            iteration=iteration, wall_time=seconds, epochs=epochs,
            products=self.context.products.count, loss=loss, lr=self.lr,
            damping=after.damping if iteration else None,
            cg_iterations=None if cg is None or not iteration else cg - (self.cg_before or 0),
        )
        if evaluate:
            with torch.no_grad():
                model = self.problem.model
                record.train_error = float(self.problem.error_fn(model, *self.problem.train))
                record.test_error = float(self.problem.error_fn(model, *self.problem.test))
        return record

    def result(self, stopped_by: str) -> RunResult:
        final = self.log.records[-1]
        if final.train_error is None:  # resumed with a budget already used up
            final = self._record(final.loss, evaluate=True)
        diverged = stopped_by == "diverged"
        return RunResult(
            optimizer=self.spec.name, seed=self.config.seed, lr=self.lr,
            batch_size=self.batch_size, stopped_by=stopped_by, records=self.log.records,
            diverged=diverged,
            final_train_error=math.inf if diverged else final.train_error,
            final_test_error=math.inf if diverged else final.test_error,
        )
