"""Figures for ``hesskit spectrum``: the spectral density and the top eigenvalues.

Drawn from numbers already computed (a density on a grid, Ritz values and residuals); no
derivative is computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from hesskit.atomic_write import save_figure_atomically

DPI = 110


def plot_spectral_density(
    grid: Sequence[float],
    density: Sequence[float],
    path: Path,
    *,
    eigenvalues: Sequence[float] = (),
    largest: float | None = None,
    width: float | None = None,
    title: str = "spectral density",
) -> Path:
    """Density against eigenvalue on a log y axis (as in PyHessian's figures).

    ``eigenvalues`` (e.g. the Lanczos top-k) are marked with vertical lines. Values below
    1e-12 of the peak are clipped so the log axis shows the bulk and the outliers. Beyond
    ``largest`` (the largest eigenvalue, when Lanczos converged) there is no eigenvalue: the
    density there is only the tail of the Gaussian smoothing of width ``width`` (σ), drawn
    dashed and grey; σ is stated in the legend.
    """
    grid = np.asarray(grid, dtype=float)
    density = np.asarray(density, dtype=float)
    floor = max(float(density.max()), 1e-300) * 1e-12
    clipped = np.maximum(density, floor)
    smoothing = f", Gaussian smoothing σ = {width:.2g}" if width is not None else ""
    inside = grid <= largest if largest is not None else np.ones_like(grid, dtype=bool)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(grid[inside], clipped[inside], color="C0", label=f"SLQ density{smoothing}")
    if not inside.all():
        ax.semilogy(grid[~inside], clipped[~inside], color="0.6", linestyle="--",
                    label="smoothing tail past the largest eigenvalue")
    for index, value in enumerate(eigenvalues):
        ax.axvline(value, color="C3", linewidth=0.8, alpha=0.7,
                   label="Lanczos top eigenvalues" if index == 0 else None)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=9)
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=DPI)
    plt.close(fig)
    return path


def plot_eigenvalues(
    values: Sequence[float],
    residuals: Sequence[float],
    path: Path,
    *,
    title: str = "top eigenvalues",
) -> Path:
    """Eigenvalue against its index, with the residual ‖Av − θv‖ as an error bar.

    For a symmetric matrix an eigenvalue lies within the residual of each Ritz value. The
    residuals are usually far smaller than the markers, so the largest is also written in
    the axes.
    """
    values = np.asarray(values, dtype=float)
    residuals = np.asarray(residuals, dtype=float)
    index = np.arange(1, len(values) + 1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(index, values, yerr=residuals, fmt="o", color="C0", capsize=3)
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_xticks(index)
    ax.set_xlabel("index i (largest first)")
    ax.set_ylabel(r"Ritz value $\theta_i$")
    if len(residuals):
        ax.text(0.98, 0.95, f"largest residual {float(residuals.max()):.1e}",
                transform=ax.transAxes, ha="right", va="top", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=DPI)
    plt.close(fig)
    return path


def plot_block_spectra(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    top: dict[str, float],
    path: Path,
    *,
    title: str = "per-block spectra",
) -> Path:
    """Each block's smoothed spectral density (left, log y) and its top eigenvalue (right,
    a bar per block, log x when all are positive): how much the blocks differ."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(3, 2))
    for i, (block, (grid, density)) in enumerate(curves.items()):
        density = np.asarray(density, dtype=float)
        floor = max(float(density.max()), 1e-300) * 1e-12
        left.semilogy(grid, np.maximum(density, floor), color=f"C{i % 10}", label=block)
    left.set_xlabel("eigenvalue")
    left.set_ylabel("density (SLQ, smoothed)")
    if len(curves) <= 12:
        left.legend(fontsize=7)
    names = list(top)
    values = np.array([top[name] for name in names])
    right.barh(range(len(names)), values, color=[f"C{i % 10}" for i in range(len(names))])
    right.set_yticks(range(len(names)), names, fontsize=7)
    right.invert_yaxis()
    if np.all(values > 0):
        right.set_xscale("log")
    right.set_xlabel("top eigenvalue of the block")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=DPI)
    plt.close(fig)
    return path
