"""Choosing how far to go along a computed step: CG-iterate backtracking and Armijo search.

Both are pure functions over a loss callable, so they can be tested on closed forms:

* :func:`choose_iterate` (Martens 2010, §4.6): CG minimises a quadratic model that is only
  trusted near θ; an earlier, shorter CG iterate may lower the real objective more than the
  last. Walk back from the last kept iterate while the previous one is better.
* :func:`armijo_line_search` (Martens 2010, §8; the constants of his released code): shrink
  the step p by 0.8 until L(θ + t p) ≤ L(θ) + c·t·∇Lᵀp with c = 10⁻², at most 60 times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hesskit.errors import InvalidArgumentError


@dataclass(frozen=True)
class ArmijoSearch:
    """Backtracking line search settings (Martens' code: c = 1e-2, shrink 0.8, 60 tries).

    Attributes:
        sufficient_decrease: c in L(θ + t p) ≤ L(θ) + c·t·∇Lᵀp.
        shrink: t ← t · shrink after a failed try.
        max_tries: trial step sizes before giving up (the step is then rejected).
    """

    sufficient_decrease: float = 1e-2
    shrink: float = 0.8
    max_tries: int = 60

    def __post_init__(self) -> None:
        if not (0 < self.sufficient_decrease < 1 and 0 < self.shrink < 1 and self.max_tries >= 1):
            raise InvalidArgumentError(
                "need 0 < sufficient_decrease < 1, 0 < shrink < 1 and max_tries ≥ 1, got "
                f"{self.sufficient_decrease}, {self.shrink}, {self.max_tries}"
            )


@dataclass(frozen=True)
class LineSearchResult:
    """The accepted step size t (0 when none was), L(θ + t p) and the loss evaluations."""

    step_size: float
    value: float
    evaluations: int

    @property
    def success(self) -> bool:
        return self.step_size > 0


def choose_iterate(
    candidates: Sequence[object], objective: Callable[[object], float]
) -> tuple[int, float, int]:
    """Martens' backtracking over CG iterates (§4.6).

    Evaluates the last candidate, then earlier ones while each is strictly better than the
    one after it (non-finite values count as +∞); assumes the objective along the iterates
    is unimodal, which saves evaluations.

    Args:
        candidates: the kept iterates, in CG order (at least one).
        objective: the real objective at a candidate (e.g. the loss at θ + p).

    Returns:
        (index of the chosen candidate, its objective value, evaluations made).

    >>> choose_iterate([1.0, 2.0, 3.0, 4.0], lambda p: (p - 2.2) ** 2)[0]
    1
    """
    if not candidates:
        raise InvalidArgumentError("choose_iterate needs at least one candidate iterate")
    best = len(candidates) - 1
    best_value = _finite_or_inf(objective(candidates[best]))
    evaluations = 1
    for index in range(best - 1, -1, -1):
        value = _finite_or_inf(objective(candidates[index]))
        evaluations += 1
        if not value < best_value:
            break
        best, best_value = index, value
    return best, best_value, evaluations


def armijo_line_search(
    objective: Callable[[float], float],
    value: float,
    slope: float,
    *,
    value_at_one: float | None = None,
    settings: ArmijoSearch | None = None,
) -> LineSearchResult:
    """Backtracking (Armijo) line search along a direction p.

    Tries t = 1, s, s², … (s = ``settings.shrink``) and accepts the first finite t with
    φ(t) ≤ φ(0) + c·t·min(φ′(0), 0), where φ(t) = L(θ + t p); the min makes a direction
    that is not a descent direction need a plain decrease.

    Args:
        objective: t ↦ L(θ + t p).
        value: L(θ) = φ(0).
        slope: ∇Lᵀp = φ′(0) (negative for a descent direction).
        value_at_one: φ(1) if already known (saves one evaluation).
        settings: c, shrink factor and number of tries (default :class:`ArmijoSearch`).

    Returns:
        The accepted step size and value; step size 0 (and ``value``) when none passed.

    >>> round(armijo_line_search(lambda t: (t - 0.3) ** 2, 0.09, -0.6).step_size, 6)
    0.512
    """
    settings = settings or ArmijoSearch()
    step, evaluations = 1.0, 0
    descent = min(slope, 0.0)
    for attempt in range(settings.max_tries):
        if attempt == 0 and value_at_one is not None:
            trial = value_at_one
        else:
            trial = objective(step)
            evaluations += 1
        if math.isfinite(trial) and trial <= value + settings.sufficient_decrease * step * descent:
            return LineSearchResult(step, trial, evaluations)
        step *= settings.shrink
    return LineSearchResult(0.0, value, evaluations)


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf
