"""The budget of a training run: when to stop, and how much of it is used."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from hesskit.errors import InvalidArgumentError

CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    "process": time.process_time,
}
"""How optimizer seconds are measured. ``wall``: elapsed time (``time.perf_counter``), what
a user waits for on a quiet machine. ``process``: CPU seconds of the training process, all
its threads together (``time.process_time``): on one torch thread this equals the wall
time of a quiet machine, and it stays fair when other work shares the cores (a benchmark
that runs beside other jobs), because time the process waits for a core is not counted."""


def clock(name: str) -> Callable[[], float]:
    """The clock called ``name`` (a key of :data:`CLOCKS`)."""
    if name not in CLOCKS:
        raise InvalidArgumentError(f"clock must be one of {', '.join(CLOCKS)}, not {name!r}")
    return CLOCKS[name]


@dataclass(frozen=True)
class Budget:
    """When to stop: the first of the given limits reached (each counted over the whole run,
    resumed parts included). ``seconds`` counts optimizer time only (no evaluation)."""

    iterations: int | None = None
    seconds: float | None = None
    epochs: float | None = None

    def __post_init__(self) -> None:
        limits = (self.iterations, self.seconds, self.epochs)
        if all(limit is None for limit in limits):
            raise InvalidArgumentError(
                "no budget given; pass --iterations, --time-limit or --epochs"
            )
        if any(limit is not None and not limit > 0 for limit in limits):
            raise InvalidArgumentError(f"budget limits must be positive, not {limits}")

    def fraction(self, iteration: int, seconds: float, epochs: float) -> float:
        """How much of the budget is used, in [0, 1] (the most advanced limit)."""
        used = [
            used / limit
            for used, limit in ((iteration, self.iterations), (seconds, self.seconds),
                                (epochs, self.epochs))
            if limit is not None
        ]
        return min(1.0, max(used))

    def exhausted_by(self, iteration: int, seconds: float, epochs: float) -> str | None:
        """The name of the limit reached, or ``None``."""
        if self.iterations is not None and iteration >= self.iterations:
            return "iterations"
        if self.seconds is not None and seconds >= self.seconds:
            return "time-limit"
        if self.epochs is not None and epochs >= self.epochs - 1e-12:
            return "epochs"
        return None


def passed_mark(fraction: float, previous: float, points: int | None) -> bool:
    """Whether the budget fraction crossed a multiple of 1/points in the last step."""
    return points is not None and math.floor(fraction * points) > math.floor(previous * points)
