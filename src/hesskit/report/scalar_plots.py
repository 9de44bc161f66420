"""Figures for the scalar commands (``activations``, ``newton``, ``neuron``).

Every value drawn comes from the library (:mod:`hesskit.activations`, :mod:`hesskit.newton`,
:mod:`hesskit.neuron`); this module only evaluates those on grids and draws. Figures are
PNG files written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from hesskit.activations import Activation
from hesskit.atomic_write import save_figure_atomically
from hesskit.neuron import NeuronNewtonResult, ReluNeuronMSE
from hesskit.newton import NewtonResult


def plot_activations(
    activations: Sequence[Activation], path: Path, *, x_range: tuple[float, float] = (-4, 4)
) -> Path:
    """One panel per activation with σ, σ′ and σ″ on ``x_range``; returns ``path``."""
    columns = 3
    rows = math.ceil(len(activations) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    x = torch.linspace(*x_range, 801, dtype=torch.float64)
    for ax, activation in zip(axes.flat, activations, strict=False):
        ax.plot(x, activation.value(x), label="σ", color="C0")
        ax.plot(x, activation.first(x), label="σ′", color="C1")
        ax.plot(x, activation.second(x), label="σ″", color="C2", linestyle="--")
        if activation.kink is not None:
            ax.axvline(activation.kink, color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(f"{activation.name} ({activation.kink_convention()})", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.4)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(activations) :]:
        ax.set_visible(False)
    fig.suptitle("Transfer functions and their closed-form derivatives")
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_newton(activation: Activation, result: NewtonResult, path: Path) -> Path:
    """σ and σ′ around the Newton iterates, the iterates marked in order; returns ``path``."""
    xs = [it.x for it in result.iterates]
    low, high = min(xs), max(xs)
    margin = max(1.0, 0.2 * (high - low))
    x = torch.linspace(low - margin, high + margin, 801, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(x, activation.value(x), label="f = σ")
    ax.plot(x, activation.first(x), label="f′", linestyle="--")
    ax.plot(xs, [it.f for it in result.iterates], "o-", color="C3", label="Newton iterates")
    for k, it in enumerate(result.iterates):
        ax.annotate(str(k), (it.x, it.f), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0, color="black", linewidth=0.4)
    ax.set_xlabel("x")
    ax.set_title(f"Newton on {activation.name}: {result.status.value}")
    ax.legend()
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_neuron(
    problem: ReluNeuronMSE, result: NeuronNewtonResult, b_fixed: float, path: Path
) -> Path:
    """Three panels: E(w) at b = ``b_fixed``; d²E/dw² against w; Newton's path on E's contours."""
    path_w = [it.w for it in result.iterates]
    path_b = [it.b for it in result.iterates]
    w_low, w_high = min([-2.0, *path_w]) - 0.5, max([3.0, *path_w]) + 0.5
    b_low, b_high = min([-2.0, *path_b]) - 0.5, max([2.0, *path_b]) + 0.5
    ws = torch.linspace(w_low, w_high, 601, dtype=torch.float64).tolist()
    fig, (ax_loss, ax_curv, ax_path) = plt.subplots(1, 3, figsize=(15, 4.5))

    ax_loss.plot(ws, [problem.loss(w, b_fixed) for w in ws])
    ax_loss.set(xlabel="w", ylabel="E(w, b)", title=f"E(w) at b = {b_fixed:g}")

    ax_curv.step(ws, [float(problem.hessian(w, b_fixed)[0, 0]) for w in ws], where="mid")
    for kink in problem.kinks_in_w(b_fixed).tolist():
        if w_low <= kink <= w_high:
            ax_curv.axvline(kink, color="grey", linewidth=0.4, linestyle=":")
    ax_curv.set(
        xlabel="w",
        ylabel="∂²E/∂w²",
        title="d²E/dw² = (2/n) Σ_active x² (jumps where a sample crosses the kink)",
    )
    ax_curv.title.set_fontsize(9)

    grid_w = torch.linspace(w_low, w_high, 121, dtype=torch.float64).tolist()
    grid_b = torch.linspace(b_low, b_high, 121, dtype=torch.float64).tolist()
    surface = torch.tensor(
        [[problem.loss(w, b) for w in grid_w] for b in grid_b], dtype=torch.float64
    )
    levels = torch.unique(torch.quantile(surface.flatten(), torch.linspace(0, 0.95, 30).double()))
    contours = ax_path.contour(grid_w, grid_b, surface, levels=levels.tolist(), cmap="viridis")
    fig.colorbar(contours, ax=ax_path, label="E")
    ax_path.plot(path_w, path_b, "o-", color="C3", label="Newton path")
    ax_path.plot(path_w[0], path_b[0], "s", color="C3")
    ax_path.set(xlabel="w", ylabel="b", title=f"Newton on (w, b): {result.status.value}")
    ax_path.legend()

    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=110)
    plt.close(fig)
    return path
