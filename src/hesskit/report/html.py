"""One self-contained HTML file for a benchmark: tables and inline PNG figures.

Everything is inside the file (figures as ``data:image/png;base64`` URIs, CSS inline),
so it opens in any browser, offline, and can be mailed as one attachment. It is drawn from
the JSON report alone (:mod:`hesskit.report.schema`), which is written next to it.
"""

from __future__ import annotations

import base64
import html
import statistics
from dataclasses import dataclass
from pathlib import Path

from hesskit.report.plots import benchmark_figures
from hesskit.report.schema import BenchmarkReport, write_report_json

HTML_NAME = "report.html"
JSON_NAME = "report.json"

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f0f0f0; }
figure { margin: 1.5em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; } .note { color: #555; } code { background: #f5f5f5; }
"""


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
    """The whole report as one HTML document (figures inline)."""
    escape = html.escape
    unit = "s" if report.budget_kind == "seconds" else "epochs"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hesskit bench: {escape(report.problem)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Optimizer benchmark: <code>{escape(report.problem)}</code></h1>",
        f"<p>{escape(report.problem_description)}</p>",
        f"<p><b>Budget per run:</b> {report.budget_value:g} {unit}. "
        f"<b>Reported error:</b> {escape(report.error_name)}. "
        f"<b>Seeds:</b> {', '.join(map(str, report.seeds))}.</p>",
        f'<p class="note">{escape(report.method_note)}</p>',
        "<h2>Results (median over seeds)</h2>",
        _summary_table(report),
    ]
    parts += [f'<p class="note">{escape(s.reason)}</p>' for s in report.skipped]
    for key, (caption, png) in benchmark_figures(report).items():
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure id="{key}"><img alt="{escape(caption)}" '
            f'src="data:image/png;base64,{encoded}"><figcaption>{escape(caption)}'
            "</figcaption></figure>"
        )
    parts += [_lr_table(report), "<h2>Environment</h2>", _environment_table(report),
              f'<p class="note">Data: <code>{JSON_NAME}</code> next to this file '
              f"(schema version {report.version}); created {escape(report.created)}.</p>",
              "</body></html>"]
    return "\n".join(part for part in parts if part)


def write_report(report: BenchmarkReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    json_path = write_report_json(report, out_dir / JSON_NAME)
    html_path = out_dir / HTML_NAME
    html_path.write_text(render_html(report), encoding="utf-8")
    return html_path, json_path


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    return "diverged" if value == float("inf") else f"{value:.4g}"


def _summary_table(report: BenchmarkReport) -> str:
    head = ("method", "lr", "seeds", "train error", "test error", "iterations", "epochs",
            "curvature products", "seconds")
    body = []
    for row in summary_rows(report):
        seeds = f"{row.seeds}" + (f" ({row.diverged} diverged)" if row.diverged else "")
        cells = (row.title, _number(row.lr), seeds, _number(row.train_error),
                 _number(row.test_error), f"{row.iterations:g}", f"{row.epochs:.3g}",
                 f"{row.products:g}", f"{row.seconds:.3g}")
        body.append(cells)
    return _table(head, body)


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
    return "<h2>Learning-rate selection</h2>" + _table(head, body)


def _environment_table(report: BenchmarkReport) -> str:
    return _table(("item", "value"), list(report.environment.items()))


def _table(head: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    escape = html.escape
    header = "".join(f"<th>{escape(cell)}</th>" for cell in head)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in cells) + "</tr>"
        for cells in body
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
