"""The one progress mechanism: plain lines when no live bar can be seen (cadence, text,
time left, silence when short), for the training loop and for library functions alike."""

from __future__ import annotations

import torch

import hesskit
from hesskit import progress
from hesskit.progress import Progress, ProgressLines, progress_lines
from hesskit.report.schema import IterationRecord
from hesskit.training import progress_bar
from hesskit.training.progress_bar import RunProgressBar


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_then_a_final_line():
    clock, lines = FakeClock(), []
    with ProgressLines("Lanczos", 60, unit="products", every_s=5, clock=clock,
                       write=lines.append) as bar:
        for done in range(1, 59):
            clock.now += 0.5  # 29 s in all: a line at 5, 10, ..., 25 s, then the last
            bar.update(done)
    # after t s with k of 60 done, (60 - k)/k · t s are left
    assert lines == [f"Lanczos: {k}/60 products ({100 * k / 60:.0f} %) after {k // 2} s, "
                     f"~{(60 - k) * (k // 2) / k:.0f} s left"
                     for k in (10, 20, 30, 40, 50)] + [
                     "Lanczos: 58/60 products (97 %) done after 29 s"]


def test_a_run_shorter_than_the_interval_prints_nothing():
    clock, lines = FakeClock(), []
    with ProgressLines("short", 3, every_s=5, clock=clock, write=lines.append) as bar:
        for done in range(1, 4):
            clock.now += 1.0
            bar.update(done)
    assert lines == []


def test_unknown_total_and_fraction_with_details():
    clock, lines = FakeClock(), []
    count = ProgressLines("SLQ", None, unit="products", every_s=2, clock=clock,
                          write=lines.append)
    fraction = ProgressLines("train", 1.0, every_s=2, clock=clock, write=lines.append)
    clock.now += 2.5
    count.update(7)
    fraction.update(0.25, "loss 0.5")
    assert lines == ["SLQ: 7 products after 2 s",
                     "train: 25 % after 2 s, ~8 s left, loss 0.5"]


def test_progress_lines_only_where_a_live_bar_is_invisible(monkeypatch):
    monkeypatch.setattr(progress, "live_display_visible", lambda: True)
    assert progress_lines("x", 1) is None
    monkeypatch.setattr(progress, "live_display_visible", lambda: False)
    assert isinstance(progress_lines("x", 1), ProgressLines)


def test_run_progress_bar_prints_lines_with_the_latest_stats_when_not_a_terminal(monkeypatch):
    clock, lines = FakeClock(), []
    monkeypatch.setattr(progress_bar, "live_display_visible", lambda: False)
    with RunProgressBar("digits · hf", enabled=True, clock=clock, write=lines.append) as bar:
        for i in range(1, 5):
            clock.now += 3.0
            bar.update(i / 4, IterationRecord(iteration=i, wall_time=i, epochs=i, products=0,
                                              loss=1.0 / i, damping=0.5 if i == 3 else None))
    # the line at 12 s already shows the end: no repeated "done" line
    assert lines == ["digits · hf: 50 % after 6 s, ~6 s left, loss 0.5",
                     "digits · hf: 100 % after 12 s, loss 0.25  λ 0.5"]


def test_remaining_time_reads_like_a_person_would_say_it():
    assert progress.remaining_text(120.0, 1, 3) == "~4 min left"
    assert progress.remaining_text(30.0, 1, 2) == "~30 s left"
    assert progress.remaining_text(7200.0, 1, 2) == "~2.0 h left"


def test_library_progress_is_plain_lines_on_stderr_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress, "live_display_visible", lambda stderr=False: False)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    op = hesskit.MatrixOperator(torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64)))
    pairs = hesskit.top_eigenpairs(op, 2, seed=0)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines and all(line.startswith("Lanczos") and " products " in line for line in lines)
    assert lines[-1].startswith("Lanczos") and "done after" in lines[-1]
    assert f"{pairs.products}/" in lines[-1]
    assert "" not in lines  # no blank lines from an invisible live bar


def test_library_progress_is_silent_for_short_work(capsys):
    with Progress("quick", 10) as bar:
        bar.advance(10)
    assert capsys.readouterr().err == ""
