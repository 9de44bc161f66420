"""benchmarks/summarize_bench.py: errors at equal time / data and the best-of rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "summarize_bench.py"


@pytest.fixture(scope="module")
def summarize():
    spec = importlib.util.spec_from_file_location("summarize_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(iteration: int, seconds: float, epochs: float, error: float | None) -> dict:
    return {"iteration": iteration, "wall_time": seconds, "epochs": epochs,
            "train_error": error}


def run(name: str, seed: int, errors: list[float], lr: float | None = 1e-3) -> dict:
    records = [record(i, float(i), 2.0 * i, e) for i, e in enumerate(errors)]
    return {"optimizer": name, "seed": seed, "lr": lr, "records": records,
            "final_train_error": errors[-1], "final_test_error": errors[-1] + 0.1,
            "diverged": False}


@pytest.fixture()
def report() -> dict:
    return {
        "problem": "toy", "error_name": "squared error", "seeds": [0, 1, 2],
        "optimizers": ["adam", "kfac"], "titles": {"adam": "Adam", "kfac": "K-FAC"},
        "runs": [run("adam", 0, [9.0, 5.0, 3.0]), run("adam", 1, [9.0, 4.0, 2.0]),
                 run("adam", 2, [9.0, 6.0, 4.0]),
                 run("kfac", 0, [9.0, 7.0, 1.0], lr=None),
                 run("kfac", 1, [9.0, 8.0, 1.5], lr=None),
                 run("kfac", 2, [9.0, 9.0, 0.5], lr=None)],
    }


def test_error_at_takes_the_last_point_at_or_before(summarize):
    records = [record(0, 0.0, 0.0, 9.0), record(1, 1.0, 2.0, 5.0), record(2, 2.0, 4.0, None),
               record(3, 3.0, 6.0, 3.0)]
    assert summarize.error_at(records, "wall_time", 1.5) == 5.0
    assert summarize.error_at(records, "wall_time", 2.5) == 5.0  # the unevaluated point is skipped
    assert summarize.error_at(records, "epochs", 6.0) == 3.0
    assert summarize.error_at(records, "wall_time", 3.5) is None  # the run ended before 3.5 s
    assert summarize.error_at(records, "wall_time", -1.0) is None


def test_tables_give_medians_and_name_the_best_of_each_kind(summarize, report):
    final = summarize.final_table(report)
    assert "| Adam | 0.001 | 3 | 3.1 | 2 | 4 | 2 | 0/3 |" in final
    assert "| K-FAC | – | 1 | 1.1 |" in final
    table = summarize.equal_budget_table(report, times=[1.0, 2.0], epochs=[2.0])
    assert "| Adam | 5 | 3 | 5 |" in table
    assert "| K-FAC | 8 | 1 | 8 |" in table
    assert "| *best first-order* | Adam 5 | Adam 3 | Adam 5 |" in table
    assert "| *best curvature-based* | K-FAC 8 | K-FAC 1 | K-FAC 8 |" in table


def test_main_prints_both_tables(summarize, report, tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    summarize.main([str(path), "--times", "2", "--epochs", "4"])
    out = capsys.readouterr().out
    assert out.startswith("**toy**: squared error, medians over seeds 0, 1, 2")
    assert "| method | 2 s | 4 ep |" in out


def test_reports_of_one_problem_merge_and_a_method_in_two_is_refused(summarize, report, tmp_path,
                                                                    capsys):
    first = {**report, "optimizers": ["adam"], "titles": {"adam": "Adam"},
             "runs": [r for r in report["runs"] if r["optimizer"] == "adam"]}
    second = {**report, "optimizers": ["kfac"], "titles": {"kfac": "K-FAC"}, "seeds": [0, 1, 2, 7],
              "runs": [r for r in report["runs"] if r["optimizer"] == "kfac"]}
    merged = summarize.merge_reports([first, second])
    assert merged["optimizers"] == ["adam", "kfac"] and merged["seeds"] == [0, 1, 2, 7]
    assert summarize.equal_budget_table(merged, [2.0], []) == \
        summarize.equal_budget_table(report, [2.0], [])
    with pytest.raises(SystemExit, match="'adam' is in more than one report"):
        summarize.merge_reports([first, first])
    with pytest.raises(SystemExit, match="different problems"):
        summarize.merge_reports([first, {**second, "problem": "other"}])
    paths = []
    for i, part in enumerate((first, second)):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(part))
    summarize.main([str(path) for path in paths])
    assert "| K-FAC |" in capsys.readouterr().out
