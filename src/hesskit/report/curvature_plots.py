"""The page of a ``hesskit train --track-curvature`` run: its curvature against the step.

Drawn from ``curvature.jsonl`` alone (:mod:`hesskit.training.curvature_tracking`); no
derivative is computed here. ``curvature.png``: the sharpness λ_max (and the other top-k
eigenvalues, and each layer's block sharpness, when tracked) against the iteration, with
the stability threshold 2/η dashed (the momentum-aware threshold the record gives for SGD,
else 2/η, gradient descent's, as a reference); beside it, the Hutchinson trace with ± one
standard error, when tracked. ``index.html`` in the run folder shows the figure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from hesskit.atomic_write import save_figure_atomically
from hesskit.report.pages import PAGE_NAME, Section, figure, paragraph, table, write_page
from hesskit.report.provenance import command_block, record_pending

FIGURE_NAME = "curvature.png"
CAPTION = ("Sharpness λ_max of the objective's {matrix} on the fixed batch of {samples} "
           "samples against the step, with the stability threshold 2/η dashed{trace}.")


def read_curvature_log(path: Path) -> tuple[dict, list[dict], dict | None]:
    """(header, measurement lines, summary line or None) of a ``curvature.jsonl``."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    header = next(line for line in lines if line.get("kind") == "header")
    measurements = [line for line in lines if line.get("kind") == "measurement"]
    summary = next((line for line in lines if line.get("kind") == "summary"), None)
    return header, measurements, summary


def _threshold(line: dict) -> float:
    if line.get("threshold") is not None:
        return float(line["threshold"])
    lr = line.get("lr")
    return 2.0 / lr if lr else math.nan


def _nan_for_null(value: object) -> object:
    """A line with each null number (a non-finite value, written as null) as NaN."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {key: _nan_for_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(item) for item in value]
    return value


def plot_curvature(header: dict, lines: list[dict], path: Path) -> Path:
    """Write the sharpness (and trace) figure to ``path`` (PNG) and return ``path``."""
    lines = [{key: value if key in ("threshold", "lr") else _nan_for_null(value)
              for key, value in line.items()} for line in lines]
    has_trace = any("trace" in line for line in lines)
    fig, axes = plt.subplots(1, 2 if has_trace else 1, figsize=(12 if has_trace else 7, 4.2),
                             squeeze=False)
    ax = axes[0, 0]
    steps = [line["iteration"] for line in lines]
    for name in sorted({name for line in lines for name in line.get("blocks", {})}):
        ax.plot(steps, [line.get("blocks", {}).get(name, math.nan) for line in lines],
                linewidth=0.8, alpha=0.6, label=f"block {name}")
    k = max((len(line.get("top_k", [])) for line in lines), default=0)
    for index in range(1, k):
        ax.plot(steps, [line["top_k"][index] for line in lines], color="0.6", linewidth=0.8,
                label="other top-k" if index == 1 else None)
    ax.plot(steps, [line["sharpness"] for line in lines], "o-", color="C0", markersize=3,
            label="sharpness λ_max")
    thresholds = [_threshold(line) for line in lines]
    if any(math.isfinite(t) for t in thresholds):
        momentum = any(line.get("threshold") is not None for line in lines)
        ax.plot(steps, thresholds, "--", color="C3",
                label="2/η, momentum-adjusted (SGD)" if momentum else "2/η (gradient descent)")
    plotted = [v for line in lines for v in (line["sharpness"], *line.get("top_k", ()),
                                             *line.get("blocks", {}).values())]
    finite = [t for t in thresholds if math.isfinite(t)]
    if plotted and all(v > 0 for v in plotted) and finite and max(finite) > 10 * max(plotted):
        ax.set_yscale("log")  # the threshold far above: both on one axis
    ax.set_xlabel("step")
    ax.set_title(f"top eigenvalue of the {header.get('matrix', 'hessian')}", fontsize=10)
    ax.legend(fontsize=7)
    if has_trace:
        ax = axes[0, 1]
        values = [line.get("trace", math.nan) for line in lines]
        errors = [line.get("trace_stderr", 0.0) or 0.0 for line in lines]
        ax.errorbar(steps, values, yerr=errors, fmt="o-", color="C1", markersize=3,
                    capsize=2)
        ax.set_xlabel("step")
        ax.set_title(f"trace (Hutchinson, {header.get('trace_probes')} probes, ± 1 s.e.)",
                     fontsize=10)
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=100)
    plt.close(fig)
    return path


def write_train_page(folder: Path, log: Path) -> Path:
    """``folder/index.html``: the curvature figure of a train run and its overhead table."""
    folder = Path(folder)
    record_pending(folder)
    header, lines, summary = read_curvature_log(log)
    png = plot_curvature(header, lines, folder / FIGURE_NAME)
    caption = CAPTION.format(matrix=header.get("matrix", "hessian"),
                             samples=header.get("batch_samples"),
                             trace="; right: its trace" if "trace" in header["quantities"]
                             else "")
    parts = [*command_block(folder), figure(png, caption, key="curvature")]
    if summary is not None:
        parts.append(table(("measurements", "seconds measuring", "seconds of the run",
                            "overhead"),
                           [(summary["measurements"], f"{summary['measure_seconds']:.3g}",
                             f"{summary['elapsed_seconds']:.3g}",
                             f"{100 * summary['overhead']:.1f}%")]))
    parts.append(paragraph(f"Every measurement is a line of {log.name}; the threshold is "
                           "the momentum-aware one for SGD, 2/η of gradient descent (a "
                           "reference only) for other methods.", note=True))
    section = Section("Curvature during training",
                      "The curvature of the objective on a fixed batch, measured every "
                      f"{header.get('every')} steps of the run.", tuple(parts))
    return write_page(folder / PAGE_NAME, "hesskit train", [section])
