"""A progress bar for estimates that take a while, and only for those.

``EstimateProgress`` counts curvature-vector products. With ``show=None`` (the default) it
stays silent until the estimate has run for ``delay`` seconds (2 s), then shows a rich bar on
stderr; ``show=True`` shows it at once, ``show=False`` never. Short estimates (every unit
test) therefore print nothing.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EstimateProgress:
    """Context manager: ``with EstimateProgress("Lanczos", total) as bar: bar.advance(k)``.

    Args:
        description: what is being estimated (shown left of the bar).
        total: the product budget (the bar's full length); may be an upper bound.
        show: True shows the bar at once, False never, None after ``delay`` seconds.
        delay: seconds of silence before an automatic bar appears.
    """

    def __init__(
        self, description: str, total: int, *, show: bool | None = None, delay: float = 2.0
    ) -> None:
        self.description = description
        self.total = total
        self.show = show
        self.delay = delay
        self.completed = 0
        self._start = 0.0
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> EstimateProgress:
        self._start = time.perf_counter()
        if self.show:
            self._open()
        return self

    def advance(self, products: int = 1) -> None:
        """Record ``products`` more products; opens the bar once the delay has passed."""
        self.completed += products
        waited = time.perf_counter() - self._start >= self.delay
        if self._progress is None and self.show is None and waited:
            self._open()
        if self._progress is not None:
            self._progress.update(self._task, completed=min(self.completed, self.total))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def visible(self) -> bool:
        """Whether the bar is currently displayed."""
        return self._progress is not None

    def _open(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("products"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task(self.description, total=self.total)
        self._progress.start()
        self._progress.update(self._task, completed=min(self.completed, self.total))
