"""RMSProp's second-moment estimate next to the curvature diagonals, along a training run.

RMSProp (Tieleman & Hinton 2012; ``torch.optim.RMSprop``) divides the gradient by √v,
v ← α v + (1 − α) g² (g the mini-batch gradient): √v acts like a diagonal curvature
estimate. This module trains a ``Problem`` and, every ``every`` steps, compares √v entry
by entry with, at the same parameters and on all the problem's data,

* |diag H| (the Hessian, exact where the architecture allows, else Hutchinson),
* diag G (Gauss-Newton, exact),
* diag EF = Σ_b w_b c_b Σ_i g_i² (empirical Fisher, exact) and √diag EF, which has the
  units of √v (the like-for-like comparison),

per parameter tensor (layer) and over all parameters, by three numbers: Spearman's rank
correlation, the cosine similarity, and the scale median(√v / d) over entries with d > 0.
For RMSprop, v is the optimizer's ``square_avg``; for any other optimizer an EMA of g² with
α is kept alongside (without bias correction, as RMSprop does). No interpretation is coded
here: :func:`summarize` only states the numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.estimators.exact_diagonal import diagonal
from hesskit.problem import Problem
from hesskit.tensor_tree import call_model

OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]
DIAGONALS = ("|diag H|", "diag G", "diag EF", "sqrt diag EF")
"""The curvature diagonals √v is compared with, in plot and summary order."""
ALL = "all"
"""The layer name of the comparison over all parameters."""


@dataclass(frozen=True)
class Comparison:
    """√v against one curvature diagonal d, on one layer (or ``"all"``), at one step."""

    step: int
    layer: str
    diagonal: str
    spearman: float
    cosine: float
    scale: float


@dataclass
class RMSPropAnalysis:
    """The comparisons along the run and the vectors of the last recorded step.

    Attributes:
        optimizer: the optimizer's class name.
        alpha: the EMA factor α of v.
        steps: optimizer steps taken; ``every``: steps between records.
        hessian_method: how diag H was obtained (exact or Hutchinson, with the reason).
        comparisons: one record per (step, layer, diagonal).
        final_step: the step of ``final``; ``final``: ``{"sqrt v": [...], DIAGONALS...,
            "layer": [...]}`` entry by entry (flat layout order) at that step.
    """

    optimizer: str
    alpha: float
    steps: int
    every: int
    hessian_method: str = ""
    comparisons: list[Comparison] = field(default_factory=list)
    final_step: int = 0
    final: dict[str, list] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RMSPropAnalysis:
        data = dict(data)
        data["comparisons"] = [Comparison(**c) for c in data.get("comparisons", [])]
        return cls(**data)

    def series(self, layer: str, diagonal: str, metric: str) -> tuple[list[int], list[float]]:
        """Steps and values of one metric (``"spearman"``, ``"cosine"``, ``"scale"``)."""
        rows = [c for c in self.comparisons if c.layer == layer and c.diagonal == diagonal]
        return [c.step for c in rows], [getattr(c, metric) for c in rows]


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation (scipy); NaN when either vector is constant."""
    if a.numel() < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = spearmanr(a.double().cpu().numpy(), b.double().cpu().numpy()).statistic
    return float(value)


def cosine(a: Tensor, b: Tensor) -> float:
    """⟨a, b⟩ / (‖a‖ ‖b‖); NaN when either is zero."""
    a, b = a.double(), b.double()
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else math.nan


def scale(sqrt_v: Tensor, d: Tensor) -> float:
    """median(√v / d) over the entries with d > 0; NaN when there are none."""
    mask = d > 0
    if not bool(mask.any()):
        return math.nan
    return float(torch.median((sqrt_v[mask] / d[mask]).double()))


def curvature_diagonals(problem: Problem, probes: int = 100) -> tuple[dict[str, Tensor], str]:
    """The four diagonals of :data:`DIAGONALS` at the current parameters, flat ``[N]``."""
    hessian = diagonal(problem, "hessian", probes=probes)
    method = hessian.method.value
    if hessian.fallback_reason:
        method += f" ({hessian.fallback_reason})"
    ef = diagonal(problem, "ef").values
    values = {
        "|diag H|": hessian.values.abs(),
        "diag G": diagonal(problem, "ggn").values,
        "diag EF": ef,
        "sqrt diag EF": ef.clamp_min(0).sqrt(),
    }
    return values, method


def compare(step: int, problem: Problem, sqrt_v: Tensor, diagonals: dict[str, Tensor]):
    """The comparisons of √v with each diagonal, per layer and over all parameters."""
    layers = [(ALL, slice(0, problem.num_params))]
    layers += [(name, problem.layout.slice(name)) for name in problem.layout.names]
    rows = []
    for kind, d in diagonals.items():
        for layer, part in layers:
            a, b = sqrt_v[part], d[part]
            rows.append(Comparison(step, layer, kind, spearman(a, b), cosine(a, b), scale(a, b)))
    return rows


def rmsprop_curvature_analysis(
    problem: Problem,
    *,
    optimizer: OptimizerFactory | None = None,
    steps: int = 200,
    every: int = 20,
    lr: float = 1e-3,
    alpha: float = 0.99,
    probes: int = 100,
    on_record: Callable[[int], None] | None = None,
) -> RMSPropAnalysis:
    """Train ``problem`` and compare √v with the curvature diagonals every ``every`` steps.

    Step t uses batch t mod (number of batches) and that batch's own loss (a mini-batch
    step); the diagonals use all batches. The model's parameters are changed in place.

    Args:
        problem: model, loss and data (the chosen parameters are trained).
        optimizer: a function from parameters to an optimizer; default
            ``torch.optim.RMSprop(params, lr=lr, alpha=alpha)``.
        steps: optimizer steps T ≥ 1.
        every: record every k steps (and at the last step).
        lr: learning rate of the default optimizer.
        alpha: α of the default RMSprop, and of the EMA kept for other optimizers.
        probes: Hutchinson probes if diag H cannot be exact.
        on_record: called with the step after each record (for progress display).

    Cost: T gradients plus, per record, the three diagonals (each a few gradients for a
    chain of supported layers).
    """
    if steps < 1 or every < 1:
        raise InvalidArgumentError(f"steps ({steps}) and every ({every}) must be at least 1")
    if not 0 <= alpha < 1:
        raise InvalidArgumentError(f"alpha must be in [0, 1), got {alpha}")
    named = dict(problem.model.named_parameters())
    params = [named[name] for name in problem.layout.names]
    if optimizer is None:
        opt = torch.optim.RMSprop(params, lr=lr, alpha=alpha)
    else:
        opt = optimizer(params)
    own_ema = not isinstance(opt, torch.optim.RMSprop)
    if not own_ema:
        alpha = float(opt.param_groups[0]["alpha"])
    ema = [torch.zeros_like(p) for p in params]
    analysis = RMSPropAnalysis(type(opt).__name__, alpha, steps, every)
    batches = problem.batches()  # cycled, one pass at a time (a stream is never kept)
    for step in range(1, steps + 1):
        batch = next(batches, None)
        if batch is None:
            batches = problem.batches()
            batch = next(batches)
        opt.zero_grad()
        problem.loss.value(call_model(problem.model, batch.inputs), batch.targets).backward()
        if own_ema:
            for v, p in zip(ema, params, strict=True):
                v.mul_(alpha).addcmul_(p.grad, p.grad, value=1 - alpha)
        opt.step()
        if step % every == 0 or step == steps:
            v = ema if own_ema else [opt.state[p]["square_avg"] for p in params]
            _record(analysis, problem, step, problem.layout.flatten(v).sqrt(), probes)
            if on_record is not None:
                on_record(step)
    return analysis


def _record(analysis: RMSPropAnalysis, problem: Problem, step: int, sqrt_v: Tensor,
            probes: int) -> None:
    diagonals, analysis.hessian_method = curvature_diagonals(problem, probes)
    analysis.comparisons += compare(step, problem, sqrt_v, diagonals)
    analysis.final_step = step
    layer_of = np.repeat(problem.layout.names, problem.layout.sizes).tolist()
    analysis.final = {"sqrt v": sqrt_v.tolist(), "layer": layer_of}
    analysis.final |= {kind: d.tolist() for kind, d in diagonals.items()}


def summarize(analysis: RMSPropAnalysis) -> list[str]:
    """Sentences that state the numbers of the last recorded step and their change."""
    step = analysis.final_step
    lines = [f"{analysis.optimizer} for {analysis.steps} steps, α = {analysis.alpha:g}; "
             f"diag H: {analysis.hessian_method}."]
    for kind in DIAGONALS:
        steps, rho = analysis.series(ALL, kind, "spearman")
        if not steps:
            continue
        last = next(c for c in reversed(analysis.comparisons)
                    if c.layer == ALL and c.diagonal == kind)
        text = (f"At step {step}, over all parameters, √v against {kind}: rank correlation "
                f"{last.spearman:.2f}, cosine similarity {last.cosine:.2f}, "
                f"median of √v / {kind} {last.scale:.3g}")
        if len(steps) > 1:
            text += f"; the rank correlation was {rho[0]:.2f} at step {steps[0]}"
        lines.append(text + ".")
        per_layer = [c for c in analysis.comparisons
                     if c.step == step and c.diagonal == kind and c.layer != ALL
                     and not math.isnan(c.spearman)]
        if len(per_layer) > 1:
            low = min(per_layer, key=lambda c: c.spearman)
            high = max(per_layer, key=lambda c: c.spearman)
            lines.append(f"  per layer, rank correlation with {kind} ranges from "
                         f"{low.spearman:.2f} ({low.layer}) to {high.spearman:.2f} ({high.layer}).")
    return lines


def diagonal_summary(problem: Problem, probes: int = 100) -> list[str]:
    """One line per curvature diagonal at the current parameters: method, trace, range."""
    lines = []
    for kind, label in (("hessian", "diag H"), ("ggn", "diag G"), ("ef", "diag EF")):
        result = diagonal(problem, kind, probes=probes)
        values = result.values.double()
        trace = f"trace {result.trace:.6g}"
        if not result.exact:
            trace += f" (± at most {result.trace_stderr_bound:.3g})"
        lines.append(
            f"{label}: {result.method.value}; {trace}; entries from {float(values.min()):.3g} "
            f"to {float(values.max()):.3g}, median {float(values.median()):.3g}, "
            f"{int((values < 0).sum())} of {values.numel()} negative"
        )
        if result.fallback_reason:
            lines.append(f"  ({result.fallback_reason})")
    return lines
