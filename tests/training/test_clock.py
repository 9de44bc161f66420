"""The clock that optimizer seconds are counted on (``TrainConfig.clock``)."""

from __future__ import annotations

import time

import pytest
from tests.training.test_train_loop import toy_problem

from hesskit.errors import InvalidArgumentError
from hesskit.training import budget
from hesskit.training.loop import Budget, TrainConfig, train


def test_the_time_budget_is_counted_on_the_configured_clock(monkeypatch):
    ticks = iter(range(0, 10**6))
    monkeypatch.setitem(budget.CLOCKS, "ticks", lambda: float(next(ticks)))
    result = train(toy_problem(), TrainConfig("adam", clock="ticks"), Budget(seconds=3.0),
                   progress=False)
    # every step reads the clock twice, so each step takes exactly one tick
    assert [r.iteration for r in result.records][-1] == 3
    assert result.records[-1].wall_time == pytest.approx(3.0)


def test_process_clock_is_cpu_time_and_wall_clock_is_elapsed_time():
    assert budget.clock("process") is time.process_time
    assert budget.clock("wall") is time.perf_counter
    started = time.process_time()
    time.sleep(0.05)  # sleeping uses no CPU
    assert time.process_time() - started < 0.04


def test_an_unknown_clock_is_a_one_sentence_error():
    with pytest.raises(InvalidArgumentError, match="clock must be one of wall, process"):
        train(toy_problem(), TrainConfig("adam", clock="sundial"), Budget(iterations=1),
              progress=False)


def test_the_clock_is_named_in_the_log_header_note(tmp_path):
    train(toy_problem(), TrainConfig("adam", clock="process"), Budget(iterations=1),
          out_dir=tmp_path, progress=False)
    header = (tmp_path / "log.jsonl").read_text().splitlines()[0]
    assert "CPU seconds of the training process" in header


