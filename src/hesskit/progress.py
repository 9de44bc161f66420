"""Progress of long work: the one mechanism for the library's estimators and the CLI.

On a terminal (and with the ``rich`` extra installed) a live bar shows on stderr. Anywhere
else (a pipe, a batch log, CI, ``nohup``) a live bar would be invisible, or print blank
lines, so the same progress is written as plain lines instead, at most one every
:data:`EVERY_S` seconds::

    Lanczos (largest 5): 120/300 products (40 %) after 15 s, ~23 s left

and a last ``done after`` line. Work shorter than the interval prints nothing, so every
unit test and every quick call stays silent.

* :class:`Progress` is what library functions use (``with Progress("Hutch++ trace",
  total) as bar: bar.advance(k)``): nothing for the first :data:`DELAY_S` seconds, then a
  bar or lines on stderr.
* :class:`ProgressLines` is the plain-line writer itself, with an explicit clock and
  writer (the training loop's bar falls back to it, and tests drive it with a fake clock).
* :func:`remaining_text` is the "~4 min left" estimate both use: elapsed time scaled by
  the work left, which holds when the units of work cost about the same.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

EVERY_S = 5.0
"""Seconds between two progress lines."""
DELAY_S = 2.0
"""Seconds of silence before :class:`Progress` shows anything."""


def live_display_visible(*, stderr: bool = False) -> bool:
    """Whether a live bar on stdout (or stderr) can be seen: the stream is a terminal and
    ``rich`` (the ``cli`` extra) is installed."""
    try:
        from rich.console import Console
    except ImportError:
        return False
    return Console(stderr=stderr).is_terminal


def duration_text(seconds: float) -> str:
    """``42 s``, ``4 min``, ``1.5 h``: a duration as a person reads it.

    >>> duration_text(42.4), duration_text(250), duration_text(5400)
    ('42 s', '4 min', '1.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def remaining_text(elapsed: float, done: float, total: float | None) -> str:
    """``~4 min left``: ``elapsed`` scaled by the work left; empty when it cannot be told.

    >>> remaining_text(60.0, 1, 3)
    '~2 min left'
    >>> remaining_text(10.0, 0, 3), remaining_text(10.0, 3, 3), remaining_text(10.0, 1, None)
    ('', '', '')
    """
    if total is None or done <= 0 or done >= total:
        return ""
    return f"~{duration_text(elapsed * (total - done) / done)} left"


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
        the progress moved since that line, or the work ended short of ``total`` (a
        budget that was not needed: the line says it is done)."""
        moved = (self.done, self.detail) != self._printed
        short = self.total is not None and self.done < self.total
        if self.lines and (moved or short):
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
        left = "" if final else remaining_text(now - self.start, self.done, self.total)
        extra = "".join(f", {part}" for part in (left, self.detail) if part)
        return f"{self.title}: {amount} {word} {now - self.start:.0f} s{extra}"

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


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Progress:
    """Context manager for a library function's work: ``bar.advance(k)`` per unit done.

    Silent for ``delay`` seconds (:data:`DELAY_S`), then a live bar on a terminal, else
    :class:`ProgressLines` on stderr (a line every :data:`EVERY_S` seconds).

    Args:
        description: what is being computed (starts the bar or line).
        total: the work when done, e.g. a product budget (may be an upper bound).
        unit: the unit of work, shown after the count (default ``"products"``).
        show: True shows it at once, False never, None after ``delay`` seconds.
        delay: seconds of silence first (default :data:`DELAY_S`).
    """

    def __init__(self, description: str, total: int, *, unit: str = "products",
                 show: bool | None = None, delay: float | None = None) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.show = show
        self.delay = DELAY_S if delay is None else delay
        self.completed = 0
        self._start = 0.0
        self._bar: Any = None
        self._task: Any = None
        self._lines: ProgressLines | None = None

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.show:
            self._open()
        return self

    def advance(self, amount: int = 1) -> None:
        """Record ``amount`` more units; opens the display once the delay has passed."""
        self.completed += amount
        waited = time.monotonic() - self._start >= self.delay
        if not self.visible and self.show is None and waited:
            self._open()
        done = min(self.completed, self.total)
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
        elif self._lines is not None:
            self._lines.update(done)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._lines is not None and exc is None:
            self._lines.close()
        self._bar = self._lines = None

    @property
    def visible(self) -> bool:
        """Whether the bar or the lines have been opened."""
        return self._bar is not None or self._lines is not None

    def _open(self) -> None:
        if live_display_visible(stderr=True):
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn(self.unit), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(self.description, total=self.total)
            self._bar.start()
            self._bar.update(self._task, completed=min(self.completed, self.total))
        else:
            self._lines = ProgressLines(self.description, self.total, unit=self.unit,
                                        every_s=EVERY_S, write=_stderr_line)
            self._lines.start = self._start
