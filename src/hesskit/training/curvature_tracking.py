"""``hesskit train --track-curvature``: the curvature of the objective along a training run.

Every ``every`` iterations (0, every, 2·every, …) a :class:`hesskit.monitor.CurvatureMonitor`
measures, at the parameters θ_t the run has after t optimizer steps, on one FIXED batch B
(``batch_size`` samples drawn once from the training set with the run's seed:
:func:`fixed_batch_indices`), the matrix A of the objective

    J(θ) = ℓ_B(θ) + (wd/2)‖θ‖²,    A = ∇²ℓ_B(θ) + wd·I   (or G_B(θ) + wd·I, Gauss-Newton),

so each eigenvalue of the loss's matrix is shifted by wd and its trace by wd·N:

* ``sharpness``: λ_max(A), the sharpness of Cohen et al. (ICLR 2021), with gradient
  descent's stability threshold 2/η (SGD: the momentum-aware one,
  :func:`hesskit.monitor.stability_threshold`; other methods: ``null``);
* ``top-k``: its ``k`` largest eigenvalues; ``trace``: tr(A) by Hutchinson's estimator;
* ``blocks``: λ_max of each layer's diagonal block (:func:`hesskit.estimators.module_blocks`).

The top eigenvalue is always computed: Lanczos warm-starts from the previous top
eigenvector. Each measurement is one line of ``curvature.jsonl`` in the run folder (a
header line first, and a summary line when the run ends), with the iteration, the
quantities, the threshold, the products and seconds spent, and the share of the run's wall
time spent measuring so far (``overhead``: measuring seconds over the seconds of the whole
training loop, steps, evaluations, checkpoints and measurements, summed over the sessions
of a resumed run).

A measurement changes nothing the run reads next: the monitor works on a functional view
(parameters and buffers such as BatchNorm's running statistics untouched) and draws from
its own seeded generators; the global torch, NumPy and Python generators are saved and
restored around it anyway. Resume: every checkpoint holds the tracker's state (the log so
far, the warm-start eigenvector, the counters), so a resumed run writes exactly the lines
an uninterrupted one would (timings aside), with no line lost or repeated.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hesskit.atomic_write import write_bytes_atomically
from hesskit.errors import InvalidArgumentError
from hesskit.estimators.blocks import module_blocks
from hesskit.monitor import MATRICES, CurvatureMonitor
from hesskit.tensor_tree import num_samples, select

CURVATURE_LOG_NAME = "curvature.jsonl"
QUANTITIES = ("sharpness", "top-k", "trace", "blocks")
DEFAULT_EVERY = 10
DEFAULT_BATCH_SIZE = 512
DEFAULT_K = 5
TRACE_PROBES = 10
"""Hutchinson probes per trace measurement (the record gives the standard error)."""


WARM_START_KEYS = ("previous", "previous_preconditioned")
"""The monitor's warm-start vectors in its state dict (kept on the CPU in a checkpoint)."""


@dataclass(frozen=True)
class CurvatureTracking:
    """What to measure along a run and how often (see the module docstring)."""

    every: int = DEFAULT_EVERY
    quantities: tuple[str, ...] = ("sharpness", "trace")
    k: int = DEFAULT_K
    batch_size: int = DEFAULT_BATCH_SIZE
    matrix: str = "hessian"
    trace_probes: int = TRACE_PROBES
    tol: float = 1e-3
    max_products: int = 100

    def __post_init__(self) -> None:
        for name in ("every", "k", "batch_size", "trace_probes", "max_products"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"curvature {name} must be an integer of at least 1, "
                                           f"got {value!r}")
        unknown = [q for q in self.quantities if q not in QUANTITIES]
        if unknown or not self.quantities:
            raise InvalidArgumentError(
                f"unknown curvature quantity {', '.join(map(repr, unknown)) or '(none)'}; "
                f"choose among {', '.join(QUANTITIES)}")
        if self.matrix not in MATRICES:
            raise InvalidArgumentError(f"curvature matrix must be one of "
                                       f"{', '.join(MATRICES)}, got {self.matrix!r}")


def fixed_batch_indices(num_train: int, size: int, seed: int) -> torch.Tensor:
    """The measurement batch: the first ``size`` of a permutation of the training set drawn
    from a generator seeded with ``seed`` (own generator: the run's are not touched),
    sorted; the whole set, in order, when ``size >= num_train``."""
    if size >= num_train:
        return torch.arange(num_train)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(num_train, generator=generator)[:size].sort().values


class CurvatureTracker:
    """Measures at the due iterations and keeps ``curvature.jsonl`` (None: in memory)."""

    def __init__(self, settings: CurvatureTracking, *, model: nn.Module, loss: Any,
                 train: tuple[Any, Any], num_train: int, weight_decay: float, seed: int,
                 folder: Path | None) -> None:
        self.settings, self.weight_decay = settings, float(weight_decay)
        self.indices = fixed_batch_indices(num_train, settings.batch_size, seed)
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        batch = select(train, self.indices)
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.monitor = CurvatureMonitor(
            model, loss, batch, every=settings.every,
            k=settings.k if "top-k" in settings.quantities else 1,
            matrix=settings.matrix, tol=settings.tol,
            trace_probes=settings.trace_probes if "trace" in settings.quantities else 0,
            blocks=module_blocks(names) if "blocks" in settings.quantities else None,
            max_products=settings.max_products, seed=seed)
        self.path = None if folder is None else Path(folder) / CURVATURE_LOG_NAME
        self.records: list[dict] = []
        self._written = bytearray()
        self.measure_seconds, self._elapsed_before = 0.0, 0.0
        self._session_start = time.perf_counter()

    @classmethod
    def for_run(cls, settings: CurvatureTracking | None, problem: Any, seed: int,
                folder: Path | None) -> CurvatureTracker | None:
        """The tracker of a training run on ``problem`` (None when ``settings`` is None)."""
        if settings is None:
            return None
        return cls(settings, model=problem.model, loss=problem.loss, train=problem.train,
                   num_train=num_samples(problem.train[0]), weight_decay=problem.weight_decay,
                   seed=seed, folder=folder)

    def elapsed(self) -> float:
        """Seconds of the training loop so far, over every session of the run."""
        return self._elapsed_before + time.perf_counter() - self._session_start

    def overhead(self) -> float:
        """The share of the loop's wall time spent measuring so far."""
        elapsed = self.elapsed()
        return self.measure_seconds / elapsed if elapsed > 0 else 0.0

    def start(self) -> None:
        """Write the header line (a new run)."""
        self._written = bytearray()
        header = {"kind": "header", **asdict(self.settings), "quantities":
                  list(self.settings.quantities), "batch_samples": len(self.indices),
                  "weight_decay": self.weight_decay, "num_params": self.num_params,
                  "note": "eigenvalues and trace are of the objective's matrix (loss + "
                          "weight cost: the loss's plus weight_decay·I) on a fixed batch; "
                          "overhead = seconds measuring / seconds of the training loop"}
        self._write(header, fresh=True)

    def after_step(self, iteration: int, optimizer: torch.optim.Optimizer) -> dict | None:
        """Measure when ``iteration`` is a multiple of ``every``; return the line written."""
        if iteration % self.settings.every:
            return None
        began = time.perf_counter()
        self.monitor.calls = iteration
        with _global_generators_kept():
            raw = self.monitor.step(optimizer)
        assert raw is not None
        self.measure_seconds += time.perf_counter() - began
        line = self._line(iteration, raw, optimizer)
        self._write(line)
        return line

    def _line(self, iteration: int, raw: dict, optimizer: torch.optim.Optimizer) -> dict:
        wd, quantities = self.weight_decay, self.settings.quantities
        values = [v + wd for v in raw["eigenvalues"]]
        line: dict[str, Any] = {"kind": "measurement", "iteration": iteration,
                                "sharpness": values[0]}
        if "top-k" in quantities:
            line["top_k"] = values
        if "trace" in quantities:
            trace = raw["trace"]
            line["trace"] = trace["value"] + wd * self.num_params
            line["trace_stderr"] = trace["stderr"]
        if "blocks" in quantities:
            line["blocks"] = {name: value + wd for name, value in raw["blocks"].items()}
        lr = optimizer.param_groups[0].get("lr")
        products = (raw["products"] + raw.get("trace", {}).get("products", 0)
                    + raw.get("blocks_products", 0))
        seconds = (raw["seconds"] + raw.get("trace", {}).get("seconds", 0.0)
                   + raw.get("blocks_seconds", 0.0))
        line.update(threshold=raw.get("threshold"), lr=None if lr is None else float(lr),
                    products=products, seconds=seconds, warm=raw["warm"],
                    converged=raw["converged"], overhead=self.overhead())
        return line

    def finish(self) -> dict:
        """Append the summary line (measurements, seconds, overhead) and return it."""
        summary = {"kind": "summary", "measurements": len(self.records),
                   "measure_seconds": self.measure_seconds, "elapsed_seconds": self.elapsed(),
                   "overhead": self.overhead()}
        self._write(summary)
        return summary

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: settings, the log so far, counters, the monitor's state."""
        monitor = self.monitor.state_dict()
        for key in WARM_START_KEYS:
            if monitor.get(key) is not None:
                monitor[key] = monitor[key].detach().cpu()
        return {"settings": {**asdict(self.settings), "quantities": list(self.settings.quantities)},
                "log": bytes(self._written).decode(), "measure_seconds": self.measure_seconds,
                "elapsed_seconds": self.elapsed(), "monitor": monitor}

    def resume(self, state: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's :meth:`state_dict`: the log is rewritten as it was at
        the checkpoint (lines written after it are dropped; they will be measured again).

        Raises:
            InvalidArgumentError: the checkpointed run did not track curvature, or tracked
                it with other settings.
        """
        now = {**asdict(self.settings), "quantities": list(self.settings.quantities)}
        if state is None:
            raise InvalidArgumentError(
                "the checkpoint's run did not track curvature; resume it without "
                "--track-curvature, or start a new run with another --out")
        if state["settings"] != now:
            changed = ", ".join(f"{key} {state['settings'].get(key)!r} → {value!r}"
                                for key, value in now.items()
                                if state["settings"].get(key) != value)
            raise InvalidArgumentError(
                f"the run tracked curvature with other settings ({changed}); resume with "
                "the same --curvature-* options")
        text = state["log"]
        lines = [json.loads(line) for line in text.splitlines()]
        self.records = [line for line in lines if line.get("kind") == "measurement"]
        self.measure_seconds = float(state["measure_seconds"])
        self._elapsed_before = float(state["elapsed_seconds"])
        self._session_start = time.perf_counter()
        monitor = dict(state["monitor"])
        for key in WARM_START_KEYS:
            if monitor.get(key) is not None:
                monitor[key] = monitor[key].to(self.device)
        self.monitor.load_state_dict(monitor)
        self._written = bytearray(text.encode())
        if self.path is not None:
            write_bytes_atomically(self.path, bytes(self._written))

    def _write(self, line: dict, *, fresh: bool = False) -> None:
        if line.get("kind") == "measurement":
            self.records.append(line)
        data = (json.dumps(_finite_or_null(line), allow_nan=False) + "\n").encode()
        self._written.extend(data)
        if self.path is None:
            return
        if fresh:
            write_bytes_atomically(self.path, data)
        else:
            with self.path.open("ab") as stream:
                stream.write(data)
                stream.flush()


def resume_tracking(tracker: CurvatureTracker | None, state: dict[str, Any] | None) -> None:
    """Continue ``tracker`` from a checkpoint's state, or refuse to resume without tracking
    a run that tracked curvature (its log would stop part-way).

    Raises:
        InvalidArgumentError: tracking on one side only, or with other settings.
    """
    if tracker is not None:
        tracker.resume(state)
    elif state is not None:
        raise InvalidArgumentError("the run tracked curvature; resume it with the same "
                                   "--track-curvature options")


def _finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float written as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    return value


@contextmanager
def _global_generators_kept() -> Iterator[None]:
    """Save torch's (CPU and CUDA), NumPy's and Python's global generators; restore them."""
    devices = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
