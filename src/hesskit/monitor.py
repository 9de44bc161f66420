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

Preconditioned sharpness (``preconditioned``; by default whenever the optimizer given to
:meth:`CurvatureMonitor.step` is torch's Adam or AdamW or has a ``preconditioner(power)``
method, i.e. hesskit's K-FAC, AdaHessian, Sophia and Shampoo): for a step
θ ← θ − η P⁻¹(·) the quantity that plays the sharpness' role is λ_max(P⁻¹A) =
λ_max(P^{-1/2} A P^{-1/2}) (A the monitor's ``matrix``, H by default), by Lanczos
(:func:`hesskit.analysis.preconditioned_sharpness`), warm-started like the sharpness from
the previous top eigenvector of P^{-1/2} A P^{-1/2}; P is the optimizer's state after its
last step (:func:`hesskit.analysis.preconditioner_adapters.preconditioner_of`), so nothing
is measured before the optimizer has state (the record says why). For Adam(W) that P is
:func:`hesskit.optim.preconditioner_operators.torch_preconditioner`'s: diag(√v̂_t) + εI with
the bias-corrected v̂_t = v_t/(1 − β₂ᵗ), ε included, the denominator torch divides m̂_t by.
Cohen et al. (2022, "Adaptive Gradient Methods at the Edge of Stability", §2) build
Adam's P from the same bias-corrected v̂_t and the same ε. As we read their §2, they write
the step with the uncorrected EMA m_t, and so fold m's correction into P as
(1 − β₁ᵗ)(diag(√v̂_t) + εI). Their value is then ours divided by (1 − β₁ᵗ), within 1% of
ours from t = 44 on with β₁ = 0.9. The record keeps the factor (``first_moment_correction``),
so either value can be read from it. The
threshold compared with it (``preconditioned_threshold``, :func:`preconditioned_threshold`)
is Adam's 2(1 + β₁)/((1 − β₁)η) (38/η for β₁ = 0.9), and for SGD (P = I) gradient
descent's. It is None for the others: no paper gives theirs.
Extra cost: the Lanczos products of A, and two products with the diagonal or Kronecker
P^{-1/2} in each of them.

Data parallel (``torch.distributed``): every rank builds the monitor on its own shard of
the measurement batch and calls :meth:`~CurvatureMonitor.step` at the same steps. The
:class:`~hesskit.Problem` built from it sums over the ranks when a process group with more
than one rank exists (each product A·V is all-reduced), so A is the matrix of the
concatenated batch. Lanczos runs the same arithmetic on every rank from the same seed, so
every rank records the same eigenvalues. The preconditioned sharpness is the same too when the
optimizer state is the same on every rank, as it is under DDP. Each rank keeps its
``records``, but only rank 0 appends to ``log``: the other ranks would write duplicate lines
to a shared path.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hesskit.analysis.preconditioner_adapters import has_preconditioner
from hesskit.analysis.sharpness import adam_stability_threshold, preconditioned_sharpness
from hesskit.distributed import rank
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


def preconditioned_threshold(optimizer: torch.optim.Optimizer) -> float | None:
    """The optimizer's threshold for λ_max(P⁻¹H). For Adam and AdamW it is
    2(1 + β₁)/((1 − β₁)η), which is 38/η for β₁ = 0.9
    (:func:`hesskit.analysis.adam_stability_threshold`, Cohen et al. 2022). For SGD without
    Nesterov (P = I) it is :func:`stability_threshold`'s (2 + 2β)/η. Otherwise None: no paper
    gives one, and the parameter groups may also disagree on η or β₁, which leaves no single
    threshold."""
    groups = optimizer.param_groups
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        settings = {(float(g["lr"]), float(g["betas"][0])) for g in groups}
        if len(settings) != 1:
            return None
        lr, beta1 = settings.pop()
        return adam_stability_threshold(lr, beta1)
    if isinstance(optimizer, torch.optim.SGD) and not any(g.get("nesterov") for g in groups):
        sgd = {(float(g["lr"]), float(g.get("momentum", 0.0) or 0.0)) for g in groups}
        return stability_threshold(*sgd.pop()) if len(sgd) == 1 else None
    return None


def _missing_state(optimizer: torch.optim.Optimizer) -> str | None:
    """Why the optimizer has no P yet (a parameter without state: no step has updated it),
    or None. SGD's P = I needs no state."""
    if isinstance(optimizer, torch.optim.SGD):
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    without = sum(1 for p in params if not optimizer.state.get(p))
    if without:
        return (f"{type(optimizer).__name__} has no state for {without} of its {len(params)} "
                "parameters yet (no step has updated them), so it has no preconditioner")
    return None


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
        preconditioned: also measure λ_max(P⁻¹A) of the optimizer given to :meth:`step`
            (module docstring). ``None`` (default): when that optimizer is torch's Adam or
            AdamW or has ``preconditioner(power)``. ``True``: for every optimizer that
            :func:`hesskit.analysis.preconditioner_adapters.preconditioner_of` reads (also
            SGD, whose P = I, and RMSprop). ``False``: never.
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
        preconditioned: bool | None = None,
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
        self.preconditioned = preconditioned
        self._previous_preconditioned: torch.Tensor | None = None

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> dict | None:
        """Count one training step; measure when the count is a multiple of ``every``.

        ``optimizer`` (optional): for ``torch.optim.SGD``, the learning rate and momentum
        of its first group give the record's ``threshold`` (2/η, (2 + 2β)/η, or with
        Nesterov (2 + 2β)/((1 + 2β)η): :func:`stability_threshold`); for other optimizers
        it is None (their thresholds concern the preconditioned sharpness, which is
        recorded separately: ``preconditioned_sharpness``, ``preconditioned_threshold`` and
        ``preconditioned``, see :meth:`measure`). Only rank 0 writes ``log`` (module
        docstring). Returns the record, or None when no measurement was due.
        """
        call, self.calls = self.calls, self.calls + 1
        if call % self.every:
            return None
        record = self.measure(optimizer)
        record["step"] = call
        if optimizer is not None:
            group = optimizer.param_groups[0]
            momentum = float(group.get("momentum", 0.0) or 0.0)
            record["threshold"] = (
                stability_threshold(float(group["lr"]), momentum,
                                    nesterov=bool(group.get("nesterov")))
                if isinstance(optimizer, torch.optim.SGD) else None)
        self.records.append(record)
        if self.log is not None and rank() == 0:
            with self.log.open("a") as file:
                file.write(json.dumps(record) + "\n")
        return record

    def wants_preconditioned(self, optimizer: torch.optim.Optimizer | None) -> bool:
        """Whether a measurement with ``optimizer`` records the preconditioned sharpness
        (``preconditioned`` resolved; no state is read)."""
        if self.preconditioned is not None:
            return self.preconditioned
        return optimizer is not None and (
            inspect.ismethod(getattr(optimizer, "preconditioner", None))
            or isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)))

    def measure(self, optimizer: torch.optim.Optimizer | None = None) -> dict:
        """One measurement at the model's current parameters (the record, not kept).

        With an ``optimizer`` for which :meth:`wants_preconditioned` holds, the record also
        has ``preconditioned_sharpness`` (λ_max(P⁻¹A), or None when skipped),
        ``preconditioned_threshold`` (:func:`preconditioned_threshold`) and
        ``preconditioned``, a dict with ``products``, ``converged``, ``warm``, ``seconds``,
        ``optimizer`` (its class name) and, for Adam(W), ``first_moment_correction``
        1 − β₁ᵗ (module docstring). When skipped, the dict has only ``skipped``, the reason:
        no optimizer was given, or the optimizer has no state yet.

        Raises:
            InvalidArgumentError: ``preconditioned=True`` and no adapter reads this
                optimizer's P.
        """
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
        if self.wants_preconditioned(optimizer):
            record.update(self._preconditioned(op, optimizer, cold))
        return record

    def state_dict(self) -> dict[str, Any]:
        """What continues the monitor exactly: its call count, how many measurements it has
        made (which decides the next cold start) and the warm start vectors."""
        return {"calls": self.calls, "measurements": len(self.records),
                "previous": self._previous,
                "previous_preconditioned": self._previous_preconditioned}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Undo :meth:`state_dict` (``records`` holds placeholders for the earlier ones)."""
        self.calls = int(state["calls"])
        self.records = [{} for _ in range(int(state["measurements"]))]
        previous = state.get("previous")
        self._previous = None if previous is None else previous.clone()
        preconditioned = state.get("previous_preconditioned")
        self._previous_preconditioned = (None if preconditioned is None
                                         else preconditioned.clone())

    def _preconditioned(self, op: Any, optimizer: torch.optim.Optimizer | None,
                        cold: bool) -> dict:
        """The preconditioned part of a record (:meth:`measure`)."""
        if optimizer is None:
            return {"preconditioned_sharpness": None, "preconditioned_threshold": None,
                    "preconditioned": {"skipped": "no optimizer was given to step"}}
        if not (has_preconditioner(optimizer) or isinstance(optimizer, torch.optim.AdamW)):
            raise InvalidArgumentError(
                f"preconditioned=True, but no adapter reads the preconditioner of "
                f"{type(optimizer).__name__}; pass preconditioned=None or False"
            )
        threshold = preconditioned_threshold(optimizer)
        reason = _missing_state(optimizer)
        if reason is not None:
            return {"preconditioned_sharpness": None, "preconditioned_threshold": threshold,
                    "preconditioned": {"skipped": reason}}
        began = time.perf_counter()
        start = None if cold else self._previous_preconditioned
        least = WARM_MIN_PRODUCTS if start is not None else None
        pairs = preconditioned_sharpness(optimizer, op, tol=self.tol,
                                         max_products=self.max_products, seed=self.seed,
                                         start=start, min_products=least,
                                         return_vectors=True)
        self._previous_preconditioned = pairs.vectors[:, 0].clone()
        details: dict = {"products": pairs.products, "converged": pairs.converged,
                         "warm": start is not None, "optimizer": type(optimizer).__name__,
                         "seconds": time.perf_counter() - began}
        if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            group = optimizer.param_groups[0]
            steps = float(optimizer.state[group["params"][0]]["step"])
            details["first_moment_correction"] = 1 - float(group["betas"][0]) ** steps
        return {"preconditioned_sharpness": float(pairs.values[0]),
                "preconditioned_threshold": threshold, "preconditioned": details}
