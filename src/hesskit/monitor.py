"""Curvature as a run goes: the sharpness, trace and per-block sharpness every few steps.

``CurvatureMonitor`` measures, on a fixed measurement batch the user chooses, at the
parameters the model has when :meth:`CurvatureMonitor.step` is called:

* the top-k eigenvalues of the Hessian H (or the Gauss-Newton matrix G) of the loss on that
  batch; λ_max(H) is the *sharpness* of Cohen et al., "Gradient Descent on Neural Networks
  Typically Occurs at the Edge of Stability" (ICLR 2021), to be read against gradient
  descent's stability threshold 2/η (:func:`stability_threshold`);
* optionally tr(H) by Hutchinson's estimator (``trace_probes`` Rademacher probes);
* optionally the top eigenvalue of each diagonal block H_bb (``blocks``), the block
  heterogeneity of Zhang et al. (2024).

Cost per measurement: Lanczos warm-started from the previous top eigenvector (a slowly
moving eigenvector converges in a few products, against 20 or more from a random start:
:data:`WARM_MIN_PRODUCTS`), ``trace_probes``
products, and the blocks' Lanczos runs; ``products`` and ``seconds`` of each are recorded.
Memory: the Lanczos basis (at most ``max_products`` + 1 N-vectors, within the memory
budget) and one kept N-vector, the previous top eigenvector.

A measurement never changes the model (parameters, buffers such as BatchNorm's running
statistics, train/eval mode) or the optimizer: it builds a fresh operator on a functional
view of the model at its current parameters (:class:`hesskit.Problem`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hesskit.errors import InvalidArgumentError
from hesskit.estimators import block_spectra, hutchinson_trace, top_eigenpairs
from hesskit.operators import gauss_newton_operator, hessian_operator
from hesskit.problem import Problem

MATRICES = {"hessian": hessian_operator, "ggn": gauss_newton_operator}

WARM_MIN_PRODUCTS = 4
"""Lanczos products before the stopping test is trusted on a warm start (a cold start
waits for ``lanczos.MIN_STEPS`` = 20, against missing an outlier that a random start barely
sees). From the previous top eigenvector the wanted Ritz values usually meet the tolerance
within a few products; but an eigenvalue that overtakes the tracked one between two
measurements has only a small component in that start and can be missed: every
``cold_every``-th measurement therefore starts cold, which bounds how long it goes unseen.
Our choice, not from a paper; each record says whether it was warm."""


def stability_threshold(lr: float, momentum: float = 0.0, *, nesterov: bool = False) -> float:
    """The sharpness above which gradient descent on a quadratic diverges: 2/η, and
    (2 + 2β)/η with heavy-ball momentum β (Cohen et al. 2021, §2 and appendix: the
    largest stable eigenvalue of the momentum iteration); with Nesterov momentum
    (``torch.optim.SGD(nesterov=True)``) (2 + 2β)/((1 + 2β)η), the root of the iteration's
    characteristic polynomial z² − (1 + β)(1 − ηλ)z + β(1 − ηλ) reaching z = −1."""
    if not lr > 0:
        raise InvalidArgumentError(f"lr must be greater than 0, got {lr!r}")
    return (2.0 + 2.0 * momentum) / (lr * ((1.0 + 2.0 * momentum) if nesterov else 1.0))


class CurvatureMonitor:
    """Measure the curvature of ``loss`` on ``batch`` every ``every`` calls of :meth:`step`.

    Args:
        model: the network being trained (read, never changed).
        loss: its loss, as :class:`hesskit.Problem` takes it (``nn.MSELoss()``, ...).
        batch: the fixed measurement batch ``(inputs, targets)`` (or several batches, as
            ``Problem`` takes them); the whole training set for full-batch gradient descent.
        every: measure on calls 0, every, 2·every, ...
        k: top eigenvalues per measurement.
        matrix: ``"hessian"`` or ``"ggn"``.
        tol: Lanczos' relative eigenvalue tolerance.
        trace_probes: Hutchinson probes for tr(A) (0: no trace).
        blocks: block name → parameter names, for per-block top eigenvalues (None: none).
        warm_start: start Lanczos from the previous top eigenvector
            (:data:`WARM_MIN_PRODUCTS`).
        cold_every: with ``warm_start``, every ``cold_every``-th measurement starts from a
            random vector with the full safeguard of ``top_eigenpairs``.
        log: a JSON-lines file to append each measurement to (None: kept in ``records``).
        max_products: Lanczos' product budget per measurement.
        seed: seed of the first start vector and of the trace probes.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Any,
        batch: Any,
        *,
        every: int = 10,
        k: int = 1,
        matrix: str = "hessian",
        tol: float = 1e-3,
        trace_probes: int = 0,
        blocks: Mapping[str, Sequence[str]] | None = None,
        warm_start: bool = True,
        cold_every: int = 10,
        log: str | Path | None = None,
        max_products: int = 100,
        seed: int = 0,
    ) -> None:
        if matrix not in MATRICES:
            raise InvalidArgumentError(f"matrix must be one of {sorted(MATRICES)}, got {matrix!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidArgumentError(f"every must be an integer of at least 1, got {every!r}")
        self.model, self.loss, self.batch = model, loss, batch
        self.every, self.k, self.matrix, self.tol = every, k, matrix, tol
        self.trace_probes, self.blocks, self.warm_start = trace_probes, blocks, warm_start
        self.max_products, self.seed, self.cold_every = max_products, seed, cold_every
        self.log = Path(log) if log is not None else None
        self.calls = 0
        self.records: list[dict] = []
        self._previous: torch.Tensor | None = None

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> dict | None:
        """Count one training step; measure when the count is a multiple of ``every``.

        ``optimizer`` (optional): for ``torch.optim.SGD``, the learning rate and momentum
        of its first group give the record's ``threshold`` (2/η, (2 + 2β)/η, or with
        Nesterov (2 + 2β)/((1 + 2β)η): :func:`stability_threshold`); for other optimizers
        it is None (their thresholds concern the preconditioned sharpness, not measured
        here yet). Returns the record, or None when no measurement was due.
        """
        call, self.calls = self.calls, self.calls + 1
        if call % self.every:
            return None
        record = self.measure()
        record["step"] = call
        if optimizer is not None:
            group = optimizer.param_groups[0]
            momentum = float(group.get("momentum", 0.0) or 0.0)
            record["threshold"] = (
                stability_threshold(float(group["lr"]), momentum,
                                    nesterov=bool(group.get("nesterov")))
                if isinstance(optimizer, torch.optim.SGD) else None)
        self.records.append(record)
        if self.log is not None:
            with self.log.open("a") as file:
                file.write(json.dumps(record) + "\n")
        return record

    def measure(self) -> dict:
        """One measurement at the model's current parameters (the record, not kept)."""
        op = MATRICES[self.matrix](Problem(self.model, self.loss, self.batch))
        start_time = time.perf_counter()
        cold = not self.warm_start or len(self.records) % self.cold_every == 0
        start = None if cold else self._previous
        least = WARM_MIN_PRODUCTS if start is not None else None
        pairs = top_eigenpairs(op, self.k, tol=self.tol, max_products=self.max_products,
                               min_products=least and max(least, 2 * self.k + 1),
                               return_vectors=True, start=start, seed=self.seed,
                               progress=False)
        self._previous = pairs.vectors[:, 0].clone()
        record: dict = {"eigenvalues": pairs.values.tolist(), "products": pairs.products,
                        "converged": pairs.converged, "warm": start is not None,
                        "seconds": time.perf_counter() - start_time}
        if self.trace_probes:
            began = time.perf_counter()
            trace = hutchinson_trace(op, self.trace_probes, seed=self.seed)
            record["trace"] = {"value": trace.value, "stderr": trace.stderr,
                               "products": trace.products,
                               "seconds": time.perf_counter() - began}
        if self.blocks:
            began = time.perf_counter()
            spectra = block_spectra(op, self.blocks, tol=self.tol, seed=self.seed,
                                    progress=False)
            record["blocks"] = {name: float(s.eigenpairs.values[0])
                                for name, s in spectra.items()}
            record["blocks_products"] = sum(s.eigenpairs.products for s in spectra.values())
            record["blocks_seconds"] = time.perf_counter() - began
        return record

    def state_dict(self) -> dict[str, Any]:
        """What continues the monitor exactly: its call count, how many measurements it has
        made (which decides the next cold start) and the warm start vector."""
        return {"calls": self.calls, "measurements": len(self.records),
                "previous": self._previous}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Undo :meth:`state_dict` (``records`` holds placeholders for the earlier ones)."""
        self.calls = int(state["calls"])
        self.records = [{} for _ in range(int(state["measurements"]))]
        previous = state.get("previous")
        self._previous = None if previous is None else previous.clone()
