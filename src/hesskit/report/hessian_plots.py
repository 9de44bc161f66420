"""Figures of a dense Hessian: log|entry| heatmaps with parameter blocks, and spectra.

Pure drawing from arrays already computed (never a derivative); matplotlib's Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_log_abs_heatmap(
    matrix: np.ndarray, names: Sequence[str], offsets: Sequence[int], title: str, path: str | Path
) -> Path:
    """log₁₀|M| as an image, exact zeros blank, parameter blocks outlined and labelled."""
    matrix = np.asarray(matrix, dtype=float)
    with np.errstate(divide="ignore"):
        image = np.ma.masked_equal(np.log10(np.abs(matrix)), -np.inf)
    figure, axes = plt.subplots(figsize=(7.5, 6.5))
    shown = axes.imshow(image, cmap="viridis", interpolation="nearest")
    figure.colorbar(shown, ax=axes, label="log10 |entry| (blank: exactly 0)")
    n = matrix.shape[0]
    edges = [*offsets, n]
    for edge in edges[1:-1]:
        axes.axhline(edge - 0.5, color="white", linewidth=0.7)
        axes.axvline(edge - 0.5, color="white", linewidth=0.7)
    centres = [(a + b - 1) / 2 for a, b in pairwise(edges)]
    axes.set_xticks(centres, names, rotation=90, fontsize=7)
    axes.set_yticks(centres, names, fontsize=7)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_spectra(
    spectra: Mapping[str, np.ndarray],
    negatives: Mapping[str, int],
    path: str | Path,
    linear_below: float | None = None,
) -> Path:
    """Sorted eigenvalues of each matrix on a symmetric-log axis (negatives visible).

    ``negatives`` gives the count of negative eigenvalues per matrix (beyond rounding, as the
    caller decided); ``linear_below`` is where the axis turns linear (default 1e-8 · max|λ|).
    """
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, values in spectra.items():
        values = np.sort(np.asarray(values, dtype=float))
        axes.plot(
            np.arange(len(values)),
            values,
            ".",
            markersize=2,
            label=f"{name} ({negatives[name]} negative)",
        )
    largest = max((float(np.abs(v).max()) for v in spectra.values() if len(v)), default=1.0)
    threshold = linear_below if linear_below else largest * 1e-8
    axes.set_yscale("symlog", linthresh=max(threshold, 1e-300))
    axes.axhline(0, color="grey", linewidth=0.5)
    axes.set_xlabel("index (ascending)")
    axes.set_ylabel("eigenvalue")
    axes.legend()
    axes.set_title("eigenvalues")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
