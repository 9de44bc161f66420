"""Figures for ``hesskit precondition``: each optimizer's P against the exact G over training.

Drawn from a :class:`~hesskit.analysis.preconditioner_records.PreconditionerAnalysis` (or
its JSON) alone; no derivative is computed here. One colour per optimizer.

``preconditioner.png`` (whole model): the condition number of P^{-1/2}(G + λI)P^{-1/2}
(solid) beside G + λI's own (dashed), log axis, hollow markers where Lanczos' smallest
end had not converged (the value is then a lower bound); the top-k spread μ₁/μ_k the same
way; the cosine of −P⁻¹g (solid) and of the step (dashed) with the damped Newton
direction; and the predicted-decrease ratio m(α*d)/m(d_N) of both, log axis.
``preconditioner_layers.png``: the damped condition numbers per layer, one panel each.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from hesskit.analysis.preconditioner_records import MODEL, OptimizerRun, PreconditionerAnalysis
from hesskit.atomic_write import save_figure_atomically


def _converged(run: OptimizerRun, layer: str, matrix: str) -> list[bool]:
    return [bool(getattr(r.scope(layer), matrix).damped_converged)
            for r in run.records if r.scope(layer) is not None]


def _positive(values: list[float]) -> list[float]:
    """Values for a log axis: non-positive and undefined ones as NaN (a gap)."""
    return [v if math.isfinite(v) and v > 0 else math.nan for v in values]


def _condition(ax: plt.Axes, analysis: PreconditionerAnalysis, layer: str, number: str,
               title: str) -> None:
    for index, run in enumerate(analysis.runs):
        color = f"C{index % 10}"
        for matrix, style, label in (("preconditioned", "-", run.title),
                                     ("curvature", "--", None)):
            steps, values = run.series(layer, matrix, number)
            ax.plot(steps, _positive(values), style, color=color, label=label, linewidth=1.2)
            if number == "condition_damped":
                done = _converged(run, layer, matrix)
                for s, v, ok in zip(steps, _positive(values), done, strict=True):
                    ax.plot([s], [v], "o", markersize=4, color=color,
                            markerfacecolor=color if ok else "none")
            else:
                ax.plot(steps, _positive(values), "o", markersize=3, color=color)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)


def plot_preconditioner_analysis(analysis: PreconditionerAnalysis, path: Path) -> Path:
    """Write the whole-model figure to ``path`` (PNG) and return ``path``."""
    lam, k = analysis.settings.get("damping"), analysis.settings.get("top_k")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _condition(axes[0, 0], analysis, MODEL, "condition_damped",
               f"κ of P^-1/2 (G + λI) P^-1/2 (solid) and of G + λI (dashed), λ = {lam:g}\n"
               "hollow: smallest eigenvalue not converged (κ at least this)")
    _condition(axes[0, 1], analysis, MODEL, "condition_top_k",
               f"top-{k} spread μ1/μk of P^-1/2 G P^-1/2 (solid) and of G (dashed)")
    for index, run in enumerate(analysis.runs):
        color = f"C{index % 10}"
        for attribute, style, label in (("preconditioned_direction", "-", run.title),
                                        ("step_direction", "--", None)):
            steps, values = run.series(MODEL, attribute, "cosine")
            axes[1, 0].plot(steps, values, style, marker="o", markersize=3, color=color,
                            label=label)
            steps, values = run.series(MODEL, attribute, "decrease_ratio_line")
            axes[1, 1].plot(steps, _positive(values), style, marker="o", markersize=3,
                            color=color)
    axes[1, 0].set_title("cosine with the damped Newton direction: −P⁻¹g (solid), "
                         "the step (dashed)", fontsize=9)
    axes[1, 0].axhline(0, color="0.7", linewidth=0.8)
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_title("predicted decrease m(α*d) / m(d_N) at the best scale: −P⁻¹g "
                         "(solid), the step (dashed)", fontsize=9)
    for ax in axes[1]:
        ax.set_xlabel("step")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{analysis.problem}: preconditioners against the Gauss-Newton matrix "
                 f"(batch {analysis.batch_size})", fontsize=11)
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_layers(analysis: PreconditionerAnalysis, path: Path) -> Path | None:
    """Write the per-layer damped condition numbers to ``path``; None without layers."""
    layers = [layer for layer in analysis.layers if layer != MODEL]
    if not layers:
        return None
    columns = min(4, len(layers))
    rows = math.ceil(len(layers) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.2 * rows),
                             squeeze=False)
    for ax, layer in zip(axes.flat, layers, strict=False):
        _condition(ax, analysis, layer, "condition_damped", f"layer {layer}: κ with λ")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("per layer: κ of P^-1/2 (G_ll + λI) P^-1/2 (solid) and of G_ll + λI "
                 "(dashed)", fontsize=10)
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=100)
    plt.close(fig)
    return path
