"""Figures of a benchmark, drawn from its JSON report alone (no training, no derivatives).

Each function takes a :class:`~hesskit.report.schema.BenchmarkReport` and returns PNG
bytes (matplotlib, Agg backend), or ``None`` when the report holds nothing to draw (no
Hessian-free run, no tuned learning rate). :func:`benchmark_figures` collects them for
:mod:`hesskit.report.html`.

Each method has one colour; each seed is one line. Errors are drawn on a log scale
(autoencoder errors fall over orders of magnitude; a zero classification error is left
off the log axis).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from hesskit.report.schema import BenchmarkReport, RunResult

DPI = 100


def benchmark_figures(report: BenchmarkReport) -> dict[str, tuple[str, bytes]]:
    """``{key: (caption, png_bytes)}`` for every figure the report has data for."""
    figures = {
        "errors": (
            f"{report.error_name.capitalize()} against optimizer wall-clock time and against "
            "data passes (epoch-equivalents: the cases of every gradient evaluation and of "
            "every curvature-vector product, over the training-set size), log scale; one "
            "line per seed.",
            plot_error_curves(report),
        ),
        "second_order": (
            "Levenberg-Marquardt damping λ and CG iterations per step of the second-order "
            "methods.",
            plot_second_order(report),
        ),
        "learning_rates": (
            "Learning-rate tuning: final training error after the tuning budget for each lr "
            "of the grid (the chosen lr is circled; missing points diverged).",
            plot_learning_rates(report),
        ),
    }
    return {key: (caption, png) for key, (caption, png) in figures.items() if png is not None}


def plot_error_curves(report: BenchmarkReport) -> bytes | None:
    """2×2 panels: train / test error (rows) against wall time / epochs (columns)."""
    if not report.runs:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharey="row")
    labelled: set[str] = set()
    for run, colour in _runs_with_colours(report):
        label = None if run.optimizer in labelled else _title(report, run)
        labelled.add(run.optimizer)
        for row, split in enumerate(("train_error", "test_error")):
            points = [(r.wall_time, r.epochs, getattr(r, split)) for r in run.records
                      if getattr(r, split) is not None]
            if not points:
                continue
            seconds, epochs, errors = zip(*points, strict=True)
            axes[row, 0].plot(seconds, errors, color=colour, label=label, linewidth=1.2)
            axes[row, 1].plot(epochs, errors, color=colour, linewidth=1.2)
    for row, split in enumerate(("training set", "test set")):
        axes[row, 0].set_ylabel(f"{report.error_name}\n({split})", fontsize=9)
        for column, xlabel in enumerate(("optimizer wall-clock time (s)", "epochs of data")):
            ax = axes[row, column]
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel(xlabel)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{report.problem}: {report.error_name}")
    return _png(fig)


def plot_second_order(report: BenchmarkReport) -> bytes | None:
    """Damping λ (log) and CG iterations against the step number, for runs that log them."""
    runs = [(run, colour) for run, colour in _runs_with_colours(report)
            if any(r.damping is not None or r.cg_iterations is not None for r in run.records)]
    if not runs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for run, colour in runs:
        label = f"{_title(report, run)} seed {run.seed}"
        damping = [(r.iteration, r.damping) for r in run.records if r.damping is not None]
        if damping:
            left.plot(*zip(*damping, strict=True), color=colour, label=label, marker=".",
                      linewidth=1.2)
        cg = [(r.iteration, r.cg_iterations) for r in run.records if r.cg_iterations is not None]
        if cg:
            right.plot(*zip(*cg, strict=True), color=colour, marker=".", linewidth=0.8)
    left.set_yscale("log")
    left.set(xlabel="step", ylabel="damping λ", title="Levenberg-Marquardt damping")
    right.set(xlabel="step", ylabel="CG iterations", title="CG iterations per step")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    return _png(fig)


def plot_learning_rates(report: BenchmarkReport) -> bytes | None:
    """Tuning score against lr (log-log) per method, chosen lr circled."""
    if not report.lr_selection:
        return None
    colours = _colours(report)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for selection in report.lr_selection:
        points = sorted((float(lr), score) for lr, score in selection.scores.items()
                        if score is not None and score < float("inf"))
        colour = colours[selection.optimizer]
        if points:
            ax.plot(*zip(*points, strict=True), color=colour, marker="o",
                    label=_name(report, selection.optimizer))
        chosen = selection.scores.get(f"{selection.chosen:g}")
        if chosen is not None and chosen < float("inf"):
            ax.scatter([selection.chosen], [chosen], s=160, facecolors="none",
                       edgecolors=colour, linewidths=2)
    ax.set(xscale="log", yscale="log", xlabel="learning rate",
           ylabel=f"final training {report.error_name}", title="Learning-rate grid")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _runs_with_colours(report: BenchmarkReport) -> Iterator[tuple[RunResult, str]]:
    colours = _colours(report)
    for run in report.runs:
        yield run, colours[run.optimizer]


def _colours(report: BenchmarkReport) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(report.optimizers)}


def _name(report: BenchmarkReport, optimizer: str) -> str:
    return report.titles.get(optimizer, optimizer)


def _title(report: BenchmarkReport, run: RunResult) -> str:
    name = _name(report, run.optimizer)
    return name if run.lr is None else f"{name} (lr {run.lr:g})"


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()
