"""One self-contained HTML file for a benchmark: tables and inline PNG figures.

Everything is inside the file (figures as ``data:image/png;base64`` URIs, CSS inline),
so it opens in any browser, offline, and can be mailed as one attachment. It is drawn from
the JSON report alone (:mod:`hesskit.report.schema`), which is written next to it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from hesskit.atomic_write import write_text_atomically
from hesskit.report.pages import document, escape, figure, paragraph, table
from hesskit.report.plots import benchmark_figures
from hesskit.report.schema import BenchmarkReport, write_report_json

HTML_NAME = "report.html"
JSON_NAME = "report.json"


@dataclass(frozen=True)
class SummaryRow:
    """One line of the final table: a method's medians over seeds."""

    optimizer: str
    title: str
    lr: float | None
    seeds: int
    diverged: int
    train_error: float
    test_error: float
    iterations: float
    epochs: float
    products: float
    seconds: float


def summary_rows(report: BenchmarkReport) -> list[SummaryRow]:
    """Medians over seeds of the final errors and costs, one row per method that ran."""
    rows = []
    for name in report.optimizers:
        runs = [run for run in report.runs if run.optimizer == name]
        if not runs:
            continue
        last = [run.records[-1] for run in runs]
        rows.append(SummaryRow(
            optimizer=name,
            title=report.titles.get(name, name),
            lr=runs[0].lr,
            seeds=len(runs),
            diverged=sum(run.diverged for run in runs),
            train_error=statistics.median(run.final_train_error for run in runs),
            test_error=statistics.median(run.final_test_error for run in runs),
            iterations=statistics.median(r.iteration for r in last),
            epochs=statistics.median(r.epochs for r in last),
            products=statistics.median(r.products for r in last),
            seconds=statistics.median(r.wall_time for r in last),
        ))
    return rows


def render_html(report: BenchmarkReport) -> str:
    """The whole report as one HTML document (figures inline; see :mod:`.pages`)."""
    unit = "s" if report.budget_kind == "seconds" else "epochs"
    parts = [
        paragraph(report.problem_description),
        f"<p><b>Budget per run:</b> {report.budget_value:g} {unit}. "
        f"<b>Reported error:</b> {escape(report.error_name)}. "
        f"<b>Seeds:</b> {', '.join(map(str, report.seeds))}.</p>",
        paragraph(report.method_note, note=True),
        "<h2>Results (median over seeds)</h2>",
        summary_table(report),
    ]
    parts += [paragraph(s.reason, note=True) for s in report.skipped]
    parts += [
        figure(png, caption, key=key) for key, (caption, png) in benchmark_figures(report).items()
    ]
    parts += [
        _lr_table(report),
        "<h2>Environment</h2>",
        _environment_table(report),
        paragraph(
            f"Data: {JSON_NAME} next to this file (schema version "
            f"{report.version}); created {report.created}.",
            note=True,
        ),
    ]
    return document(f"Optimizer benchmark: {report.problem}", parts)


def write_report(report: BenchmarkReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    json_path = write_report_json(report, out_dir / JSON_NAME)
    html_path = out_dir / HTML_NAME
    write_text_atomically(html_path, render_html(report))
    return html_path, json_path


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    return "diverged" if value == float("inf") else f"{value:.4g}"


def summary_table(report: BenchmarkReport) -> str:
    """The table of :func:`summary_rows` as HTML."""
    head = ("method", "lr", "seeds", "train error", "test error", "iterations", "epochs",
            "curvature products", "seconds")
    body = []
    for row in summary_rows(report):
        seeds = f"{row.seeds}" + (f" ({row.diverged} diverged)" if row.diverged else "")
        cells = (row.title, _number(row.lr), seeds, _number(row.train_error),
                 _number(row.test_error), f"{row.iterations:g}", f"{row.epochs:.3g}",
                 f"{row.products:g}", f"{row.seconds:.3g}")
        body.append(cells)
    return table(head, body)


def _lr_table(report: BenchmarkReport) -> str:
    if not report.lr_selection:
        return ""
    body = [
        (report.titles.get(s.optimizer, s.optimizer),
         ", ".join(f"{lr}: {_number(score)}" for lr, score in s.scores.items()),
         f"{s.chosen:g}", f"{s.tuning_budget:g}", str(s.tuning_seed))
        for s in report.lr_selection
    ]
    head = ("method", "final train error per lr", "chosen lr", "tuning budget", "seed")
    return "<h2>Learning-rate selection</h2>" + table(head, body)


def _environment_table(report: BenchmarkReport) -> str:
    return table(("item", "value"), list(report.environment.items()))
