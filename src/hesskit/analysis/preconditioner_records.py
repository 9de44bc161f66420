"""What the preconditioner analysis records, its JSON form, and the sentences that state it.

JSON (``PreconditionerAnalysis.to_json``; ``schema`` = :data:`SCHEMA`): the settings, the
:data:`DEFINITIONS` of every field, and one run per optimizer with, per recorded step, one
:class:`ScopeRecord` for the whole model (``layer == "model"``) and one per layer (the
parameters of one module, e.g. ``"0"`` for ``0.weight`` and ``0.bias``). Numbers that are
undefined (a ratio with a zero denominator, an eigenvalue of an empty spectrum) are
``null`` in the file and NaN in memory. :func:`summarize` states the numbers; no
conclusion is coded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

SCHEMA = "hesskit.preconditioner/1"
MODEL = "model"
"""The layer name of the whole-model scope."""

DEFINITIONS = {
    "G": "Gauss-Newton matrix of the step's mini-batch objective, loss + (wd/2)‖θ‖² "
         "(G_loss + wd·I), at the parameters before the step",
    "H": "Hessian of the same objective (used through its diagonal)",
    "g": "gradient of the same objective at the same parameters",
    "P": "the optimizer's preconditioner after the step (the one that step applied)",
    "layer scope": "the same quantities for one layer's parameters with the others fixed: "
                   "the diagonal blocks G_ll, P_ll and g_l (its own Newton problem)",
    "curvature": "spectrum of G; preconditioned: of P^{-1/2} G P^{-1/2} (Lanczos)",
    "top": "the k largest eigenvalues, largest first",
    "condition_top_k": "top[0] / top[-1], the spread of the k largest eigenvalues (finite "
                       "where G is singular)",
    "damped_largest, damped_smallest": "extreme eigenvalues of P^{-1/2} (G + λI) P^{-1/2} "
                                       "(P = I for curvature), λ = settings.damping",
    "condition_damped": "damped_largest / damped_smallest; when damped_converged is false "
                        "the smallest Ritz value is an upper bound and this a lower bound",
    "newton": "d_N = −(G + λI)^{-1} g by conjugate gradient; model_decrease = m(d_N), "
              "m(d) = gᵀd + ½ dᵀ(G + λI)d",
    "preconditioned_direction": "d = −P^{-1} g",
    "step_direction": "d = θ_after − θ_before, the step as taken (lr, momentum, clipping, "
                      "grafting included)",
    "cosine": "cosine between d and d_N",
    "decrease_ratio_line": "m(α* d) / m(d_N), α* = −gᵀd / dᵀ(G + λI)d the best scale on "
                           "d's line; equals the squared (G + λI)-cosine of d and d_N",
    "decrease_ratio_taken": "m(d) / m(d_N) for d as it is (negative: the model rises)",
    "diagonals": "diagonal P only: diag(P) against |diag H|, diag G, diag EF and "
                 "√diag EF of the loss (hesskit.analysis.rmsprop; wd not added): Spearman, "
                 "cosine, median(P/d)",
}


def _float(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def _json_value(value: object) -> object:
    """``value`` with NaN and ±inf as None, recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return value


def _floats(cls, data: dict):
    """``cls(**data)`` with every float field's None read back as NaN."""
    kinds = {f.name: f.type for f in fields(cls)}
    return cls(**{key: _float(value) if kinds.get(key) == "float" else value
                  for key, value in data.items()})


@dataclass
class Spectrum:
    """Eigenvalues of one matrix of a scope (definitions: :data:`DEFINITIONS`)."""

    top: list[float]
    top_converged: bool
    condition_top_k: float
    damped_largest: float
    damped_smallest: float
    damped_converged: bool
    condition_damped: float
    products: int

    @classmethod
    def from_json(cls, data: dict) -> Spectrum:
        data = dict(data, top=[_float(v) for v in data["top"]])
        return _floats(cls, data)


@dataclass
class Newton:
    """The damped Newton direction's solve and its model value m(d_N)."""

    model_decrease: float
    cg_iterations: int
    cg_status: str
    relative_residual: float

    @classmethod
    def from_json(cls, data: dict) -> Newton:
        return _floats(cls, data)


@dataclass
class Direction:
    """One direction d against d_N."""

    cosine: float
    decrease_ratio_line: float
    decrease_ratio_taken: float
    model_decrease: float

    @classmethod
    def from_json(cls, data: dict) -> Direction:
        return _floats(cls, data)


@dataclass
class DiagonalComparison:
    """diag(P) against one curvature diagonal d on one scope."""

    diagonal: str
    spearman: float
    cosine: float
    scale: float

    @classmethod
    def from_json(cls, data: dict) -> DiagonalComparison:
        return _floats(cls, data)


@dataclass
class ScopeRecord:
    """Everything measured on one scope (the model, or one layer) at one step."""

    layer: str
    size: int
    curvature: Spectrum
    preconditioned: Spectrum
    newton: Newton
    preconditioned_direction: Direction
    step_direction: Direction
    diagonals: list[DiagonalComparison] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> ScopeRecord:
        return cls(
            data["layer"], int(data["size"]), Spectrum.from_json(data["curvature"]),
            Spectrum.from_json(data["preconditioned"]), Newton.from_json(data["newton"]),
            Direction.from_json(data["preconditioned_direction"]),
            Direction.from_json(data["step_direction"]),
            [DiagonalComparison.from_json(d) for d in data.get("diagonals", [])],
        )


@dataclass
class StepRecord:
    """One recorded step: the objective it reported and its scopes (``"model"`` first)."""

    step: int
    loss: float
    scopes: list[ScopeRecord]

    def scope(self, layer: str) -> ScopeRecord | None:
        return next((s for s in self.scopes if s.layer == layer), None)


@dataclass
class OptimizerRun:
    """One optimizer's run: registry name, title, lr, what its P is, the records, and a
    note on what the run measured (e.g. Shampoo in its warm-up: Adam's steps)."""

    optimizer: str
    title: str
    lr: float | None
    preconditioner: str
    kind: str
    records: list[StepRecord] = field(default_factory=list)
    note: str = ""

    def series(self, layer: str, *path: str) -> tuple[list[int], list[float]]:
        """Steps and values of one number, e.g. ``("preconditioned", "condition_damped")``
        or ``("step_direction", "cosine")``, on ``layer`` (NaN where undefined)."""
        steps, values = [], []
        for record in self.records:
            value: object = record.scope(layer)
            if value is None:
                continue
            for name in path:
                value = getattr(value, name)
            steps.append(record.step)
            values.append(_float(value))
        return steps, values


@dataclass
class PreconditionerAnalysis:
    """The whole analysis: settings and one :class:`OptimizerRun` per optimizer."""

    problem: str
    steps: int
    every: int
    batch_size: int
    seed: int
    settings: dict
    runs: list[OptimizerRun] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        """The scopes' names, ``"model"`` first, in the order recorded."""
        for run in self.runs:
            if run.records:
                return [s.layer for s in run.records[0].scopes]
        return [MODEL]

    def to_json(self) -> dict:
        return _json_value({"schema": SCHEMA, "definitions": DEFINITIONS, **asdict(self)})

    @classmethod
    def from_json(cls, data: dict) -> PreconditionerAnalysis:
        runs = [
            OptimizerRun(
                r["optimizer"], r["title"], r["lr"], r["preconditioner"], r["kind"],
                [StepRecord(s["step"], _float(s["loss"]),
                            [ScopeRecord.from_json(c) for c in s["scopes"]])
                 for s in r["records"]],
                r.get("note", ""),
            )
            for r in data["runs"]
        ]
        return cls(data["problem"], data["steps"], data["every"], data["batch_size"],
                   data["seed"], data["settings"], runs)


def _number(value: float) -> str:
    return "undefined" if not math.isfinite(value) else f"{value:.3g}"


def summarize(analysis: PreconditionerAnalysis) -> list[str]:
    """Sentences that state, per optimizer, the whole-model numbers at the first and last
    recorded steps, and the range of the per-layer damped condition numbers at the last."""
    lam = analysis.settings.get("damping")
    lines = [f"{analysis.problem}: {analysis.steps} steps, batch {analysis.batch_size}, "
             f"recorded every {analysis.every}; λ = {lam:g}, top k = "
             f"{analysis.settings.get('top_k')}."]
    for run in analysis.runs:
        if not run.records:
            continue
        lines.append(f"{run.title} (lr {_number(run.lr or math.nan)}), P = {run.preconditioner}:")
        if run.note:
            lines.append(f"  note: {run.note}.")
        for record in (run.records[0], run.records[-1]) if len(run.records) > 1 else (
                run.records[0],):
            s = record.scope(MODEL)
            if s is None:
                continue
            lines.append(
                f"  step {record.step}: condition number with λ of P^-1/2 G P^-1/2 "
                f"{_number(s.preconditioned.condition_damped)}"
                f"{'' if s.preconditioned.damped_converged else ' (at least)'} against G's "
                f"{_number(s.curvature.condition_damped)}"
                f"{'' if s.curvature.damped_converged else ' (at least)'}; top-k spread "
                f"{_number(s.preconditioned.condition_top_k)} against "
                f"{_number(s.curvature.condition_top_k)}; cosine with the Newton direction "
                f"{_number(s.preconditioned_direction.cosine)} (−P⁻¹g), "
                f"{_number(s.step_direction.cosine)} (the step); predicted-decrease ratio "
                f"{_number(s.preconditioned_direction.decrease_ratio_line)} (−P⁻¹g, best "
                f"scale), {_number(s.step_direction.decrease_ratio_line)} (step, best scale), "
                f"{_number(s.step_direction.decrease_ratio_taken)} (step as taken)."
            )
            for d in s.diagonals:
                if d.diagonal == "diag G":
                    lines.append(f"    diag(P) against diag G: rank correlation "
                                 f"{_number(d.spearman)}, median ratio {_number(d.scale)}.")
        layers = [s for s in run.records[-1].scopes if s.layer != MODEL
                  and math.isfinite(s.preconditioned.condition_damped)]
        if len(layers) > 1:
            low = min(layers, key=lambda s: s.preconditioned.condition_damped)
            high = max(layers, key=lambda s: s.preconditioned.condition_damped)
            lines.append(f"  per layer at step {run.records[-1].step}, the preconditioned "
                         f"condition number with λ ranges from "
                         f"{_number(low.preconditioned.condition_damped)} ({low.layer}) to "
                         f"{_number(high.preconditioned.condition_damped)} ({high.layer}).")
    return lines
