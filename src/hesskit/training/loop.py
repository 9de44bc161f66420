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
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.report.schema import (
    SCHEMA_VERSION,
    IterationRecord,
    RunHeader,
    RunResult,
    to_json_dict,
    validate_log_line,
)
from hesskit.training.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from hesskit.training.optimizers import (
    Diagnostics,
    OptimizerContext,
    ProductCounter,
    get_optimizer_spec,
)

LOG_NAME = "log.jsonl"


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
class Budget:
    """When to stop: the first of the given limits reached (each counted over the whole run,
    resumed parts included). ``seconds`` counts optimizer time only (no evaluation)."""

    iterations: int | None = None
    seconds: float | None = None
    epochs: float | None = None

    def __post_init__(self) -> None:
        limits = (self.iterations, self.seconds, self.epochs)
        if all(limit is None for limit in limits):
            raise InvalidArgumentError(
                "no budget given; pass --iterations, --time-limit or --epochs"
            )
        if any(limit is not None and not limit > 0 for limit in limits):
            raise InvalidArgumentError(f"budget limits must be positive, not {limits}")

    def fraction(self, iteration: int, seconds: float, epochs: float) -> float:
        """How much of the budget is used, in [0, 1] (the most advanced limit)."""
        used = [
            used / limit
            for used, limit in ((iteration, self.iterations), (seconds, self.seconds),
                                (epochs, self.epochs))
            if limit is not None
        ]
        return min(1.0, max(used))

    def exhausted_by(self, iteration: int, seconds: float, epochs: float) -> str | None:
        """The name of the limit reached, or ``None``."""
        if self.iterations is not None and iteration >= self.iterations:
            return "iterations"
        if self.seconds is not None and seconds >= self.seconds:
            return "time-limit"
        if self.epochs is not None and epochs >= self.epochs - 1e-12:
            return "epochs"
        return None


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
        curvature_fraction: share of the gradient batch used as HF's curvature batch.
    """

    optimizer: str
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0
    eval_every: int = 10
    eval_points: int | None = None
    checkpoint_every: int | None = None
    curvature_fraction: float = 0.25


DEFAULT_BATCH_SIZE = 128


class BatchSampler:
    """Mini-batches of indices without replacement; a fresh seeded permutation per epoch.

    Its whole state (generator, permutation, cursor) goes into checkpoints, so a resumed
    run draws the same batches. A batch that would run past the end of the permutation
    starts a new epoch (drop-last), except when ``batch_size`` covers the whole set.
    """

    def __init__(self, num_data: int, batch_size: int, seed: int) -> None:
        self.num_data, self.batch_size = num_data, min(batch_size, num_data)
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation = torch.arange(num_data)
        self.cursor = num_data  # forces a permutation on the first draw

    def next(self) -> Tensor:
        if self.batch_size == self.num_data:
            return self.permutation
        if self.cursor + self.batch_size > self.num_data:
            self.permutation = torch.randperm(self.num_data, generator=self.generator)
            self.cursor = 0
        batch = self.permutation[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "permutation": self.permutation,
                "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.permutation, self.cursor = state["permutation"], int(state["cursor"])


def objective(problem: TrainingProblem, inputs: Tensor, targets: Tensor) -> Tensor:
    """ℓ(f(θ, X), y) + (wd/2)‖θ‖², the function every optimizer minimises."""
    value = problem.loss(problem.model(inputs), targets)
    if problem.weight_decay:
        squares = sum(p.pow(2).sum() for p in problem.model.parameters())
        value = value + 0.5 * problem.weight_decay * squares
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
    spec = get_optimizer_spec(config.optimizer)
    train_x, train_y = problem.train
    num_train = len(train_x)
    lr = config.lr if config.lr is not None else spec.default_lr
    batch_size = config.batch_size or (num_train if spec.full_batch else DEFAULT_BATCH_SIZE)
    batch_size = min(batch_size, num_train)
    if config.eval_every < 1:
        raise InvalidArgumentError(f"eval_every must be at least 1, not {config.eval_every}")
    if resume and out_dir is None:
        raise InvalidArgumentError("resume needs the output folder of the run (--out)")
    model_params = sum(p.numel() for p in problem.model.parameters())
    if spec.max_params is not None and model_params > spec.max_params:
        raise InvalidArgumentError(
            f"{spec.title} is limited to {spec.max_params} parameters and this model has "
            f"{model_params}; use hf instead"
        )

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    sampler = BatchSampler(num_train, batch_size, config.seed)
    current: dict[str, Tensor] = {}
    curvature_size = max(1, math.ceil(config.curvature_fraction * batch_size))
    context = OptimizerContext(
        model=problem.model, loss=problem.loss, weight_decay=problem.weight_decay, lr=lr,
        gradient_batch=lambda: (current["x"], current["y"]),
        curvature_batch=lambda: (current["x"][:curvature_size], current["y"][:curvature_size]),
        products=ProductCounter(),
    )
    optimizer = spec.build(context)
    header = RunHeader(
        problem=problem.name, optimizer=spec.name, seed=config.seed, batch_size=batch_size,
        num_train=num_train, eval_every=config.eval_every, lr=lr,
        weight_decay=problem.weight_decay,
        note=(f"train_error and test_error are evaluated every {config.eval_every} iterations "
              "and at the last one (null elsewhere); wall_time excludes evaluation and "
              "checkpoints; epochs count every closure call"),
    )
    log = _RunLog(out_dir, header)
    state = {"iteration": 0, "wall_time": 0.0, "samples": 0}
    if resume:
        saved = load_checkpoint(out_dir / CHECKPOINT_NAME)
        _check_same_settings(saved["header"], asdict(header))
        problem.model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.load_state_dict(saved["sampler"])
        restore_rng_state(saved["rng"])
        context.products.count = saved["products"]
        state = saved["counters"]
        log.resume(saved["log_bytes"])
    else:
        log.start(_evaluate_record(problem, 0, 0.0, 0.0, 0, None, lr, {}))

    def save() -> None:
        if out_dir is None:
            return
        save_checkpoint({
            "header": asdict(header), "model": problem.model.state_dict(),
            "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
            "rng": capture_rng_state(), "products": context.products.count,
            "counters": dict(state), "log_bytes": log.size(),
        }, out_dir / CHECKPOINT_NAME)

    def closure() -> Tensor:
        state["samples"] += len(current["x"])
        optimizer.zero_grad()
        value = objective(problem, current["x"], current["y"])
        value.backward()
        return value

    stopped_by = budget.exhausted_by(state["iteration"], state["wall_time"],
                                     state["samples"] / num_train)
    previous_fraction = budget.fraction(state["iteration"], state["wall_time"],
                                        state["samples"] / num_train)
    with _ProgressBar(f"{problem.name} · {spec.name}", enabled=progress) as bar:
        while stopped_by is None:
            indices = sampler.next()
            current["x"], current["y"] = train_x[indices], train_y[indices]
            cg_before = spec.diagnostics(optimizer).cg_iterations_total
            started = time.perf_counter()
            loss = float(torch.as_tensor(optimizer.step(closure)).detach())
            state["wall_time"] += time.perf_counter() - started
            state["iteration"] += 1
            epochs = state["samples"] / num_train
            stopped_by = "diverged" if not math.isfinite(loss) else budget.exhausted_by(
                state["iteration"], state["wall_time"], epochs)
            diagnostics = _step_diagnostics(spec.diagnostics(optimizer), cg_before)
            arguments = (state["iteration"], state["wall_time"], epochs,
                         context.products.count, loss, lr, diagnostics)
            fraction = budget.fraction(state["iteration"], state["wall_time"], epochs)
            if (stopped_by is not None or state["iteration"] % config.eval_every == 0
                    or _passed_mark(fraction, previous_fraction, config.eval_points)):
                record = _evaluate_record(problem, *arguments)
            else:
                record = _record(*arguments)
            log.append(record)
            bar.update(fraction, record)
            previous_fraction = fraction
            every = config.checkpoint_every
            if stopped_by is not None or (every and state["iteration"] % every == 0):
                save()
    final = log.records[-1]
    if final.train_error is None:  # resumed with a budget already used up
        final = _evaluate_record(problem, final.iteration, final.wall_time, final.epochs,
                                 final.products, final.loss, lr, {})
    diverged = stopped_by == "diverged"
    return RunResult(
        optimizer=spec.name, seed=config.seed, lr=lr, batch_size=batch_size,
        stopped_by=stopped_by, records=log.records, diverged=diverged,
        final_train_error=math.inf if diverged else float(final.train_error),
        final_test_error=math.inf if diverged else float(final.test_error),
    )


def _step_diagnostics(after: Diagnostics, cg_before: int | None) -> dict[str, Any]:
    cg = after.cg_iterations_total
    return {"damping": after.damping,
            "cg_iterations": None if cg is None else cg - (cg_before or 0)}


def _passed_mark(fraction: float, previous: float, points: int | None) -> bool:
    """Whether the budget fraction crossed a multiple of 1/points in the last step."""
    return points is not None and math.floor(fraction * points) > math.floor(previous * points)


def _record(iteration: int, wall_time: float, epochs: float, products: int, loss: float | None,
            lr: float | None, diagnostics: dict[str, Any]) -> IterationRecord:
    return IterationRecord(
        iteration=iteration, wall_time=wall_time, epochs=epochs, products=products, loss=loss,
        lr=lr, damping=diagnostics.get("damping"), cg_iterations=diagnostics.get("cg_iterations"),
    )


def _evaluate_record(problem: TrainingProblem, *arguments: Any) -> IterationRecord:
    record = _record(*arguments)
    with torch.no_grad():
        record.train_error = float(problem.error_fn(problem.model, *problem.train))
        record.test_error = float(problem.error_fn(problem.model, *problem.test))
    return record


def _check_same_settings(saved: dict[str, Any], now: dict[str, Any]) -> None:
    keys = ("problem", "optimizer", "seed", "batch_size", "lr", "weight_decay")
    changed = [key for key in keys if saved.get(key) != now.get(key)]
    if changed:
        details = ", ".join(f"{key} {saved.get(key)!r} → {now.get(key)!r}" for key in changed)
        raise InvalidArgumentError(
            f"the checkpoint was made with different settings ({details}); resume with the "
            "same settings or choose another --out"
        )


class _RunLog:
    """The JSON-lines log, mirrored in memory (``records``); file-less when ``folder`` is None."""

    def __init__(self, folder: Path | None, header: RunHeader) -> None:
        self.path = None if folder is None else Path(folder) / LOG_NAME
        self.header = header
        self.records: list[IterationRecord] = []

    def start(self, first: IterationRecord) -> None:
        if self.path is not None:
            header = {"kind": "header", **to_json_dict(self.header), "version": SCHEMA_VERSION}
            self.path.write_text(json.dumps(header, allow_nan=False) + "\n")
        self.append(first)

    def resume(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (the checkpoint's iteration) and reload it."""
        with self.path.open("r+b") as stream:
            stream.truncate(size)
        lines = self.path.read_text().splitlines()
        self.records = [validate_log_line(json.loads(line)) for line in lines[1:]]

    def append(self, record: IterationRecord) -> None:
        self.records.append(record)
        if self.path is not None:
            line = json.dumps({"kind": "iteration", **to_json_dict(record)}, allow_nan=False)
            with self.path.open("a") as stream:
                stream.write(line + "\n")

    def size(self) -> int:
        return 0 if self.path is None else self.path.stat().st_size



class _ProgressBar:
    """A rich progress bar showing the budget used and the latest loss, errors, λ and CG."""

    def __init__(self, title: str, *, enabled: bool) -> None:
        self.title, self.enabled = title, enabled
        self.shown: dict[str, str] = {}

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
            )
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=1.0, stats="")
        return self

    def update(self, fraction: float, record: IterationRecord) -> None:
        if not self.enabled:
            return
        for key, label in (("loss", "loss"), ("train_error", "train"), ("test_error", "test"),
                           ("damping", "λ"), ("cg_iterations", "CG")):
            value = getattr(record, key)
            if value is not None:
                self.shown[key] = f"{label} {value:.4g}"
        self.progress.update(self.task, completed=fraction, stats="  ".join(self.shown.values()))

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            self.progress.stop()
