"""The benchmark report: schema round trip, inline PNG figures, the median table."""

from __future__ import annotations

import base64
import io
import json
import re
import statistics
import struct

import matplotlib.image
import pytest

from hesskit.errors import DataError
from hesskit.report.html import render_html, summary_rows, write_report
from hesskit.report.schema import (
    SCHEMA_VERSION,
    BenchmarkReport,
    IterationRecord,
    LearningRateSelection,
    RunResult,
    Skipped,
    read_report_json,
    to_json_dict,
    validate_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(optimizer, seed, final, *, lr=None, second_order=False):
    records = [
        IterationRecord(iteration=i, wall_time=0.1 * i, epochs=0.5 * i, products=20 * i
                        if second_order else 0, loss=None if i == 0 else 10.0 / i,
                        train_error=10.0 / (i + 1), test_error=11.0 / (i + 1), lr=lr,
                        damping=1.5 ** -i if second_order and i else None,
                        cg_iterations=5 + i if second_order and i else None)
        for i in range(6)
    ]
    return RunResult(optimizer, seed, lr, 100, "epochs", records, final, final + 1,
                     diverged=final == float("inf"))


def sample_report():
    runs = [_run("hf", s, f, second_order=True) for s, f in ((0, 1.0), (1, 3.0), (2, 2.0))]
    runs += [_run("adam", s, f, lr=1e-3) for s, f in ((0, 4.0), (1, float("inf")), (2, 5.0))]
    return BenchmarkReport(
        problem="digits-autoencoder", problem_description="A <tiny> autoencoder.",
        error_name="squared error", budget_kind="epochs", budget_value=2.5, seeds=[0, 1, 2],
        optimizers=["hf", "newton", "adam"], runs=runs, titles={"hf": "Hessian-free"},
        lr_selection=[LearningRateSelection("adam", [1e-3, 1e-2], {"0.001": 4.0,
                                                                  "0.01": float("inf")},
                                            1e-3, 0.5, 0)],
        skipped=[Skipped("newton", "damped Newton skipped: too many parameters")],
        environment={"torch": "2.13"}, method_note="protocol", created="today",
    )


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_html_figures_are_inline_pngs_that_decode(tmp_path):
    html_path, json_path = write_report(sample_report(), tmp_path)
    html = html_path.read_text()
    sources = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(sources) == 3  # error curves, damping/CG, learning rates
    for source in sources:
        data = base64.b64decode(source, validate=True)
        width, height = _png_size(data)
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert pixels.shape[:2] == (height, width) and width > 300
        assert pixels.std() > 0.01  # something is drawn, not a blank canvas
    assert not re.search(r'src="(?!data:)', html)  # nothing loaded from elsewhere
    assert "A &lt;tiny&gt; autoencoder." in html  # text is escaped
    assert "too many parameters" in html and json_path.name in html


def test_no_second_order_figure_without_damping_records():
    report = sample_report()
    report.runs = [run for run in report.runs if run.optimizer == "adam"]
    assert render_html(report).count("<img ") == 2


def test_table_holds_medians_over_seeds_and_counts_divergence():
    hf, adam = summary_rows(sample_report())
    assert (hf.title, hf.train_error, hf.test_error) == ("Hessian-free", 2.0, 3.0)
    assert hf.products == statistics.median([100, 100, 100]) and hf.seeds == 3
    assert (adam.title, adam.lr, adam.train_error, adam.diverged) == ("adam", 1e-3, 5.0, 1)


def test_json_round_trips_through_the_schema(tmp_path):
    report = sample_report()
    _, json_path = write_report(report, tmp_path)
    data = json.loads(json_path.read_text())
    assert data["version"] == SCHEMA_VERSION
    assert data["runs"][4]["final_train_error"] is None  # inf is written as null
    again = read_report_json(json_path)
    assert to_json_dict(again) == to_json_dict(report)
    assert again.runs[4].final_train_error == float("inf")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=99), "version 99, expected 1"),
        (lambda d: d["runs"][0].pop("seed"), r"report\.runs\[0\]\.seed is missing"),
        (lambda d: d["runs"][1]["records"][2].update(epochs="x"),
         r"report\.runs\[1\]\.records\[2\]\.epochs must be float"),
        (lambda d: d.update(extra=1), r"unknown fields \['extra'\]"),
        (lambda d: d["seeds"].append(True), r"report\.seeds\[3\] must be int"),
    ],
)
def test_schema_rejects_bad_reports_naming_the_field(change, message):
    data = to_json_dict(sample_report())
    change(data)
    with pytest.raises(DataError, match=message):
        validate_report(data)


def test_report_keeps_evaluated_second_order_and_last_records_and_the_same_figures():
    def record(i, *, evaluated=False, damping=None):
        error = 1.0 / (i + 1) if evaluated else None
        return IterationRecord(iteration=i, wall_time=0.1 * i, epochs=0.1 * i, products=0,
                               loss=1.0, train_error=error, test_error=error, damping=damping)

    adam = RunResult("adam", 0, 1e-3, 10, "seconds",
                     [record(i, evaluated=i in (0, 4)) for i in range(7)], 0.2, 0.2)
    kept = adam.for_report().records
    assert [r.iteration for r in kept] == [0, 4, 6]  # evaluated ones, then the last
    assert len(adam.records) == 7  # the run itself is left alone
    hf = RunResult("hf", 0, None, 10, "seconds",
                   [record(i, evaluated=i == 0, damping=None if i == 0 else 2.0 / i)
                    for i in range(4)], 0.3, 0.3)
    assert hf.for_report().records == hf.records
    report = sample_report()
    compact = BenchmarkReport(**{**vars(report), "runs": [r.for_report() for r in report.runs]})
    assert render_html(compact) == render_html(report)  # every record was already shown
