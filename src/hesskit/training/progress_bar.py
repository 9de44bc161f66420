"""Progress of long runs: a rich bar on a terminal, a plain line every few seconds otherwise.

rich's live bars are invisible when stdout is not a terminal (CI logs, ``| tee``,
``nohup``), so a run of minutes would print nothing. :class:`ProgressLines` prints one plain
line (``title: 40/100 (40 %) after 15 s, loss 0.12``) at most every ``every_s`` seconds
and a last one (``done after``) when it closes, unless nothing moved since the previous
line; runs shorter than ``every_s`` print nothing.
:func:`progress_lines` returns one only when no live bar can be seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from hesskit.report.schema import IterationRecord

EVERY_S = 5.0
"""Seconds between two progress lines."""


def live_display_visible() -> bool:
    """Whether a rich live bar on stdout can be seen (stdout is a terminal, as rich decides)."""
    return Console().is_terminal


class ProgressLines:
    """Plain progress lines, at most one every ``every_s`` seconds of ``clock``.

    Args:
        title: what is running (starts every line).
        total: the amount of work when done (``None``: unknown; lines show the count only).
        unit: the name of one unit of work, e.g. ``"products"`` (shown after the count).
        every_s: seconds between lines.
        clock: a monotonic clock in seconds (tests pass a fake one).
        write: where a line goes (default: ``print(..., flush=True)`` on stdout).
    """

    def __init__(self, title: str, total: float | None = None, *, unit: str = "",
                 every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None) -> None:
        self.title, self.total, self.unit, self.every_s = title, total, unit, every_s
        self.clock = clock
        self.write = write or (lambda line: print(line, flush=True))
        self.start = self.last = clock()
        self.done: float = 0
        self.detail = ""
        self.lines = 0
        self._printed: tuple[float, str] | None = None

    def update(self, done: float, detail: str = "") -> None:
        """Record progress ``done`` (same units as ``total``); print if ``every_s`` passed."""
        self.done, self.detail = done, detail
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self._print(now)

    def close(self) -> None:
        """Print the last line if a line was printed before (short runs stay silent) and
        the progress moved since that line."""
        if self.lines and (self.done, self.detail) != self._printed:
            self._print(self.clock(), final=True)

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def line(self, now: float, *, final: bool = False) -> str:
        """The text of the line at time ``now``."""
        unit = f" {self.unit}" if self.unit else ""
        if self.total is None:
            amount = f"{self.done:g}{unit}"
        elif self.total == 1.0 and not self.unit:
            amount = f"{100 * self.done:.0f} %"
        else:
            share = 100 * self.done / self.total if self.total else 100.0
            amount = f"{self.done:g}/{self.total:g}{unit} ({share:.0f} %)"
        word = "done after" if final else "after"
        detail = f", {self.detail}" if self.detail else ""
        return f"{self.title}: {amount} {word} {now - self.start:.0f} s{detail}"

    def _print(self, now: float, *, final: bool = False) -> None:
        self.write(self.line(now, final=final))
        self.lines += 1
        self._printed = (self.done, self.detail)


def progress_lines(title: str, total: float | None = None, *, unit: str = "",
                   every_s: float = EVERY_S) -> ProgressLines | None:
    """A :class:`ProgressLines` when stdout is not a terminal, else ``None`` (a live bar shows)."""
    if live_display_visible():
        return None
    return ProgressLines(title, total, unit=unit, every_s=every_s)


class RunProgressBar:
    """The budget used and the latest loss, errors, λ and CG of a training run.

    A rich bar on a terminal; otherwise :class:`ProgressLines` (a line every few seconds),
    with ``clock`` and ``write`` passed to it.
    """

    def __init__(self, title: str, *, enabled: bool,
                 clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None) -> None:
        self.title, self.enabled = title, enabled
        self.clock, self.write = clock, write
        self.shown: dict[str, str] = {}
        self.lines: ProgressLines | None = None

    def __enter__(self) -> RunProgressBar:
        if self.enabled and not live_display_visible():
            self.lines = ProgressLines(self.title, 1.0, clock=self.clock, write=self.write)
        elif self.enabled:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
            )
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=1.0, stats="")
        return self

    def update(self, fraction: float, record: IterationRecord) -> None:
        if not self.enabled:
            return
        for key, label in (("loss", "loss"), ("train_error", "train"), ("test_error", "test"),
                           ("damping", "λ"), ("cg_iterations", "CG")):
            value = getattr(record, key)
            if value is not None:
                self.shown[key] = f"{label} {value:.4g}"
        stats = "  ".join(self.shown.values())
        if self.lines is not None:
            self.lines.update(min(fraction, 1.0), stats)
        else:
            self.progress.update(self.task, completed=fraction, stats=stats)

    def __exit__(self, *exc_info: object) -> None:
        if self.lines is not None:
            self.lines.close()
        elif self.enabled:
            self.progress.stop()
