"""Figure for ``hesskit diagonal``: RMSProp's √v against the curvature diagonals.

Drawn from an :class:`~hesskit.analysis.rmsprop.RMSPropAnalysis` (or its JSON) alone; no
derivative is computed here. Top row: rank correlation, cosine similarity and scale
median(√v / d) over all parameters against the step, one line per diagonal. Bottom: √v
against diag G at the last recorded step, log-log, one colour per layer, and the rank
correlation with diag G per layer against the step.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from hesskit.analysis.rmsprop import ALL, DIAGONALS, RMSPropAnalysis
from hesskit.atomic_write import save_figure_atomically

METRICS = (
    ("spearman", "Spearman rank correlation"),
    ("cosine", "cosine similarity"),
    ("scale", "median √v / d"),
)


def plot_rmsprop_analysis(analysis: RMSPropAnalysis, path: Path) -> Path:
    """Write the figure to ``path`` (PNG) and return ``path``."""
    fig = plt.figure(figsize=(12, 8))
    grid = fig.add_gridspec(2, 3)
    for column, (metric, title) in enumerate(METRICS):
        ax = fig.add_subplot(grid[0, column])
        drawn: dict[str, list[float]] = {}
        for index, kind in enumerate(DIAGONALS):
            steps, values = analysis.series(ALL, kind, metric)
            same = [other for other, seen in drawn.items() if np.allclose(seen, values)]
            label = f"{kind} (same as {same[0]})" if same else kind
            # a curve equal to an earlier one is dashed and wider, so neither hides the other
            style = {"linestyle": "--", "linewidth": 2.5, "alpha": 0.7} if same else {}
            ax.plot(steps, values, marker="o", markersize=3, color=f"C{index}", label=label,
                    **style)
            drawn[kind] = list(values)
        ax.set_xlabel("step")
        ax.set_title(f"{title} (all parameters)", fontsize=10)
        if metric == "scale":
            ax.set_yscale("log")
        ax.legend(fontsize=9)
    _scatter(fig.add_subplot(grid[1, :2]), analysis)
    _per_layer(fig.add_subplot(grid[1, 2]), analysis)
    fig.suptitle(f"{analysis.optimizer}: √v against curvature diagonals", fontsize=12)
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=110)
    plt.close(fig)
    return path


def _scatter(ax: plt.Axes, analysis: RMSPropAnalysis) -> None:
    final = analysis.final
    sqrt_v = np.asarray(final.get("sqrt v", []), dtype=float)
    ggn = np.asarray(final.get("diag G", []), dtype=float)
    layers = np.asarray(final.get("layer", []))
    positive = (sqrt_v > 0) & (ggn > 0)
    for index, layer in enumerate(dict.fromkeys(layers.tolist())):
        mask = positive & (layers == layer)
        ax.scatter(ggn[mask], sqrt_v[mask], s=4, alpha=0.5, color=f"C{index % 10}", label=layer)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("diag G")
    ax.set_ylabel("√v")
    dropped = int((~positive).sum())
    note = f"; {dropped} entries with a zero value not shown" if dropped else ""
    ax.set_title(f"step {analysis.final_step}: √v against diag G (log-log){note}", fontsize=10)
    if positive.any():
        ax.legend(fontsize=9, markerscale=3, ncol=max(1, math.ceil(len(set(layers)) / 6)))


def _per_layer(ax: plt.Axes, analysis: RMSPropAnalysis) -> None:
    layers = dict.fromkeys(c.layer for c in analysis.comparisons if c.layer != ALL)
    for index, layer in enumerate(layers):
        steps, values = analysis.series(layer, "diag G", "spearman")
        ax.plot(steps, values, marker="o", markersize=3, color=f"C{index % 10}", label=layer)
    ax.set_xlabel("step")
    ax.set_title("Spearman rank correlation with diag G, per layer", fontsize=10)
    if layers:
        ax.legend(fontsize=9)
