"""The JSON written by training runs and benchmarks, as dataclasses with a version field.

Two formats, both plain JSON:

* the **run log** (``log.jsonl``, one JSON object a line): a header
  ``{"kind": "header", "version": 1, ...}`` saying how the run was set up (including
  ``eval_every``: the full train and test errors are computed only every ``eval_every``
  iterations and at the last one; other records hold ``null`` there), then one
  :class:`IterationRecord` per iteration (``"kind": "iteration"``);
* the **benchmark report** (``report.json``): a :class:`BenchmarkReport` holding every run's
  records, the learning-rate selection and the environment. The HTML report and its plots
  are drawn from this file alone.

:func:`validate_report` checks a decoded report against this schema and raises
:class:`~hesskit.errors.DataError` naming the first offending field; readers call it
before using a file. The version is bumped whenever a field changes meaning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hesskit.atomic_write import write_text_atomically
from hesskit.errors import DataError

SCHEMA_VERSION = 1


@dataclass
class IterationRecord:
    """What one optimizer step cost and achieved.

    Attributes:
        iteration: 1-based step number.
        wall_time: seconds spent in optimizer steps so far (evaluation and checkpoint
            writing are excluded, so runs compare on optimization time alone).
        epochs: epoch-equivalents of data passed so far: the cases of every loss-and-
            gradient evaluation (closure call) plus, for each curvature-vector product,
            the cases of the batch it was built on, divided by the training-set size.
        products: curvature-vector products used so far (0 for first-order methods).
        loss: the objective on this step's mini-batch, weight decay included (``None``
            for the record of iteration 0, written before any step).
        train_error: ``error_fn`` on the full training set, or ``None`` when not evaluated.
        test_error: ``error_fn`` on the test set, or ``None`` when not evaluated.
        lr: the learning rate, or ``None`` for methods without one (HF, Newton).
        damping: Levenberg-Marquardt λ after the step (second-order methods), else ``None``.
        cg_iterations: CG iterations in this step (HF), else ``None``.
    """

    iteration: int
    wall_time: float
    epochs: float
    products: int
    loss: float | None
    train_error: float | None = None
    test_error: float | None = None
    lr: float | None = None
    damping: float | None = None
    cg_iterations: int | None = None


@dataclass
class RunHeader:
    """The first line of a run log: what was run and how errors were sampled."""

    problem: str
    optimizer: str
    seed: int
    batch_size: int
    num_train: int
    eval_every: int
    lr: float | None = None
    weight_decay: float = 0.0
    note: str = ""
    version: int = SCHEMA_VERSION


@dataclass
class RunResult:
    """One finished run: its set-up, why it stopped, and its iteration records.

    ``train`` returns every record; a benchmark report keeps only what it shows (see
    :meth:`for_report`), while the run's ``log.jsonl`` keeps them all.
    """

    optimizer: str
    seed: int
    lr: float | None
    batch_size: int
    stopped_by: str
    records: list[IterationRecord]
    final_train_error: float
    final_test_error: float
    diverged: bool = False

    def for_report(self) -> RunResult:
        """This run with the records a report plots: those where the errors were evaluated,
        those with second-order diagnostics (λ, CG iterations), and the last. A 30-minute
        Adam run takes tens of thousands of steps; its per-step records stay in its log."""
        kept = [r for r in self.records
                if r.train_error is not None or r.test_error is not None
                or r.damping is not None or r.cg_iterations is not None]
        if self.records and (not kept or kept[-1] is not self.records[-1]):
            kept.append(self.records[-1])
        return dataclasses.replace(self, records=kept)


@dataclass
class LearningRateSelection:
    """How a first-order method's learning rate was chosen from its grid.

    ``scores`` maps each tried lr (as text, since JSON keys are strings) to the final
    training error after the tuning budget (``inf`` is written as ``null`` when a run
    diverged); ``chosen`` is the lr with the lowest score.
    """

    optimizer: str
    grid: list[float]
    scores: dict[str, float | None]
    chosen: float
    tuning_budget: float
    tuning_seed: int


@dataclass
class Skipped:
    """An optimizer left out of the comparison, and why."""

    optimizer: str
    reason: str


@dataclass
class BenchmarkReport:
    """Everything the HTML report shows: budget, runs, lr selection, environment.

    ``budget_kind`` is ``"seconds"`` or ``"epochs"``; ``titles`` maps registry names to
    display names; ``error_name`` says what the problem's ``error_fn`` measures.
    """

    problem: str
    problem_description: str
    error_name: str
    budget_kind: str
    budget_value: float
    seeds: list[int]
    optimizers: list[str]
    runs: list[RunResult]
    titles: dict[str, str] = field(default_factory=dict)
    lr_selection: list[LearningRateSelection] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    method_note: str = ""
    created: str = ""
    version: int = SCHEMA_VERSION


def to_json_dict(obj: Any) -> Any:
    """A dataclass tree as JSON-ready values; non-finite floats become ``None``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(key): to_json_dict(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json_dict(value) for value in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report_json(report: BenchmarkReport, path: Path) -> Path:
    """Write ``report`` as indented JSON (strict: no NaN/Infinity literals); returns ``path``."""
    write_text_atomically(path, json.dumps(to_json_dict(report), indent=1, allow_nan=False) + "\n")
    return path


def read_report_json(path: Path) -> BenchmarkReport:
    """Read and validate a benchmark report written by :func:`write_report_json`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read benchmark report {str(path)!r} ({error}); "
                        "run `hesskit bench` to write one") from None
    return validate_report(data)


def validate_report(data: Any) -> BenchmarkReport:
    """Check a decoded benchmark report against the schema and build its dataclasses.

    Raises:
        DataError: wrong version, a missing or unknown field, or a value of the wrong type;
            the message names the field by its path (e.g. ``runs[2].records[0].epochs``).
    """
    if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise DataError(
            f"benchmark report has version {found!r}, expected {SCHEMA_VERSION}; "
            "re-run `hesskit bench` with this hesskit"
        )
    return _build(BenchmarkReport, data, "report")


def validate_log_line(data: Any) -> RunHeader | IterationRecord:
    """Check one decoded line of a run log: a header or an iteration record."""
    if not isinstance(data, dict) or data.get("kind") not in ("header", "iteration"):
        raise DataError("a run-log line must be an object with kind 'header' or 'iteration'")
    body = {key: value for key, value in data.items() if key != "kind"}
    if data["kind"] == "header":
        if body.get("version") != SCHEMA_VERSION:
            raise DataError(f"run log has version {body.get('version')!r}, "
                            f"expected {SCHEMA_VERSION}; re-run the training")
        return _build(RunHeader, body, "header")
    return _build(IterationRecord, body, "record")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise DataError(f"{where} must be a JSON object, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DataError(f"{where} has unknown fields {unknown}; is the file from another version?")
    values = {}
    for name, spec in fields.items():
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise DataError(f"{where}.{name} is missing")
            continue
        values[name] = _check(hints[name], data[name], f"{where}.{name}")
    return cls(**values)


def _check(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) == 1:
            return _check(inner[0], value, where)
        raise DataError(f"{where} has an unsupported type")  # pragma: no cover
    if origin is list:
        if not isinstance(value, list):
            raise DataError(f"{where} must be a list")
        return [_check(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DataError(f"{where} must be an object")
        return {key: _check(args[1], item, f"{where}.{key}") for key, item in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and value is None:
        return math.inf  # a non-finite value written as null
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise DataError(f"{where} must be {hint.__name__}, not {type(value).__name__}")
