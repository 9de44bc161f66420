"""benchmarks/transformer_optimizers.py: the data check, the summary and one tiny run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "transformer_optimizers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("transformer_optimizers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_file_with_another_sha256_is_refused_in_one_line(bench, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("not the dictionary")
    with pytest.raises(SystemExit) as exit_info:
        bench.load_text(path)
    message = str(exit_info.value)
    assert "\n" not in message and "sha256" in message and bench.SHA256 in message


def curve(points):
    return [{"cpu_seconds": t, "tokens": n, "val_loss": v} for t, n, v in points]


def test_reach_time_and_loss_at_tokens_interpolate(bench):
    c = curve([(0, 0, 4.0), (10, 100, 3.0), (20, 200, 2.0)])
    assert bench.first_reach(c, 2.5) == pytest.approx(15.0)
    assert bench.first_reach(c, 1.0) is None
    assert bench.value_at(c, "tokens", 150) == pytest.approx(2.5)
    assert bench.value_at(c, "tokens", 250) is None


def record(method, seed, points, step=0.1, error=None):
    c = curve(points)
    return {"method": method, "seed": seed, "curve": c, "final_val_loss": c[-1]["val_loss"],
            "tokens": c[-1]["tokens"], "median_step_seconds": step, "error": error}


def test_summary_against_adamw(bench):
    adam = [record("adamw", s, [(0, 0, 4.0), (10, 100, 3.0)]) for s in range(3)]
    fast = [record("kfac", s, [(0, 0, 4.0), (5, 50, 3.0), (10, 100, 2.0)], step=0.2)
            for s in range(3)]
    broken = [record("shf", s, [(0, 0, 4.0)], error="step 1: Boom: x") for s in range(3)]
    table = bench.summarize({"adamw": adam, "kfac": fast, "shf": broken})
    assert table["kfac"]["time_to_adamw_final"] == pytest.approx(0.5)
    assert table["kfac"]["step_cost_vs_adamw"] == pytest.approx(2.0)
    assert table["kfac"]["val_loss_at_adamw_tokens"] == pytest.approx(2.0)
    assert table["shf"]["time_to_adamw_final"] is None and len(table["shf"]["errors"]) == 3
    text = bench.table_markdown(table, {"lr": {"adamw": 1e-3, "kfac": 1.0, "shf": None}})
    assert "not reached" in text and "Boom" in text


def test_one_short_adamw_run_records_a_curve(bench):
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    ids = torch.randint(0, 12, (4000,), generator=torch.Generator().manual_seed(0))
    data = {"train": bench.windows(ids[:3000], 256), "val": bench.val_windows(ids[3000:]),
            "vocab": list(range(12))}
    result = bench.train_run("adamw", 1e-3, 0, 0.05, data)
    assert result["error"] is None and result["steps"] >= 1
    assert result["curve"][-1]["tokens"] == result["tokens"] > 0
