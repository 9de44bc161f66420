"""A training run's progress: the budget used and the latest loss, errors, λ and CG.

Built on :mod:`hesskit.progress` (the one progress mechanism): a rich bar on a terminal,
else a plain line on stdout every few seconds (``title: 40 % after 15 s, ~22 s left, loss
0.12``) and a last one when the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hesskit.progress import ProgressLines, live_display_visible
from hesskit.report.schema import IterationRecord

__all__ = ["RunProgressBar"]

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
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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
