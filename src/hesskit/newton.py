"""Newton's method on one variable, with a diagnosis of why it stops.

For a scalar f the Newton step from x is s = −f′(x)/f″(x): the stationary point of the
quadratic model f(x) + f′ s + ½ f″ s². Where f″ > 0 it converges quadratically near a
minimiser, |x_{k+1} − x*| ≈ C |x_k − x*|² with C = |f‴(x*) / (2 f″(x*))|. The method has
no answer when

* f″(x) = 0: the step divides by zero (:attr:`NewtonStatus.ZERO_CURVATURE`). Piecewise-linear
  functions such as ReLU have f″ = 0 wherever it exists, so Newton cannot take a single step;
* f″(x) < 0 while minimising: the step goes to a maximum of the model, uphill
  (:attr:`NewtonStatus.NEGATIVE_CURVATURE`);
* f′ never vanishes at finite x and only decays toward 0 as x → ±∞ (sigmoid, tanh, softplus):
  the iterates run off with steps that do not shrink (:attr:`NewtonStatus.NO_STATIONARY_POINT`).

:func:`newton` detects each case, and non-finite values, and says so in one sentence;
it never loops forever (at most ``max_iter`` steps) and never divides by zero.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from hesskit.activations import get_activation
from hesskit.errors import InvalidArgumentError

ScalarFunction = Callable[[Tensor], Tensor | float]

#: Consecutive steps that must look like a run-off before it is diagnosed.
ESCAPE_WINDOW = 4
#: In a run-off each step is at least this fraction of the previous one (they do not shrink
#: geometrically as they do on the way to a stationary point; for f = x^p the ratio is
#: (p − 2)/(p − 1), below 0.97 for every p < 35).
ESCAPE_STEP_RATIO = 0.97
#: A single step longer than this times (1 + |x|) means f″ is numerically zero.
MAX_STEP_FACTOR = 1e12


class NewtonMode(enum.Enum):
    """What Newton looks for."""

    MINIMIZE = "minimize"  # a minimiser: stops where f″ < 0 (the step would go uphill)
    STATIONARY = "stationary"  # any point with f′ = 0, whatever the sign of f″


class NewtonStatus(enum.Enum):
    """Why :func:`newton` stopped; the value is a short phrase for tables."""

    CONVERGED = "converged"
    ZERO_CURVATURE = "zero curvature"
    NO_STATIONARY_POINT = "no stationary point"
    NEGATIVE_CURVATURE = "negative curvature"
    MAX_ITERATIONS = "maximum iterations"
    NON_FINITE = "non-finite value"


@dataclass(frozen=True)
class NewtonIterate:
    """f and its first two derivatives at one iterate x."""

    x: float
    f: float
    df: float
    d2f: float


@dataclass(frozen=True)
class NewtonResult:
    """Outcome of :func:`newton`.

    Attributes:
        x: The last iterate (the stationary point when ``status`` is CONVERGED).
        iterates: Every point evaluated, x₀ first; ``len(iterates) - 1`` steps were taken.
        status: Why the method stopped.
        message: One human sentence (or two) explaining the status with the numbers.
    """

    x: float
    iterates: tuple[NewtonIterate, ...]
    status: NewtonStatus
    message: str

    @property
    def converged(self) -> bool:
        return self.status is NewtonStatus.CONVERGED

    @property
    def steps(self) -> int:
        return len(self.iterates) - 1


def _scalar(value: Tensor | float, what: str) -> float:
    tensor = torch.as_tensor(value)
    if tensor.numel() != 1:
        raise InvalidArgumentError(
            f"{what} must return a scalar, got shape {tuple(tensor.shape)}; "
            "pass a function of one variable"
        )
    return float(tensor.detach().reshape(()))


def _autograd(fn: ScalarFunction, x: float, order: int) -> list[float]:
    """fn(x) and its first ``order`` derivatives by torch.autograd in float64."""
    point = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    output = torch.as_tensor(fn(point))
    values = [_scalar(output, "f")]
    if not output.requires_grad:
        raise InvalidArgumentError(
            "f's value does not depend on x through torch operations, so autograd cannot "
            "differentiate it; write f with torch functions or pass df and d2f"
        )
    current = output.reshape(())
    for k in range(order):
        if not current.requires_grad:
            values.append(0.0)  # a constant's derivative
            current = torch.zeros((), dtype=torch.float64)
            continue
        (grad,) = torch.autograd.grad(current, point, create_graph=k + 1 < order, allow_unused=True)
        current = torch.zeros((), dtype=torch.float64) if grad is None else grad
        values.append(_scalar(current, "the derivative"))
    return values


def _evaluate(
    f: ScalarFunction, df: ScalarFunction | None, d2f: ScalarFunction | None, x: float
) -> NewtonIterate:
    """f, f′, f″ at x: closed forms where given, float64 autograd otherwise."""
    point = torch.tensor(x, dtype=torch.float64)
    if df is not None and d2f is not None:
        value = _scalar(f(point), "f")
        return NewtonIterate(x, value, _scalar(df(point), "df"), _scalar(d2f(point), "d2f"))
    if df is not None:
        first, second = _autograd(df, x, 1)
        return NewtonIterate(x, _scalar(f(point), "f"), first, second)
    value, first, second = _autograd(f, x, 2)
    return NewtonIterate(x, value, first, second if d2f is None else _scalar(d2f(point), "d2f"))


def _runs_off(iterates: list[NewtonIterate], steps: list[float]) -> bool:
    """The signature of an infimum at infinity over the last :data:`ESCAPE_WINDOW` steps.

    Every step goes the same way, none is much shorter than the one before, and f′ keeps
    its sign while |f′| strictly decays: f′ → 0 only as x → ±∞.
    """
    if len(steps) < ESCAPE_WINDOW:
        return False
    recent_steps = steps[-ESCAPE_WINDOW:]
    slopes = [it.df for it in iterates[-(ESCAPE_WINDOW + 1) :]]
    one_direction = all(s > 0 for s in recent_steps) or all(s < 0 for s in recent_steps)
    one_sign = all(d > 0 for d in slopes) or all(d < 0 for d in slopes)
    decaying = all(abs(b) < abs(a) for a, b in pairwise(slopes))
    steady = all(abs(b) >= ESCAPE_STEP_RATIO * abs(a) for a, b in pairwise(recent_steps))
    return one_direction and one_sign and decaying and steady


def _zero_curvature_message(it: NewtonIterate) -> str:
    if it.df == 0:
        return (
            f"f″(x) = 0 and f′(x) = 0 at x = {it.x:.6g}: x is a degenerate stationary point "
            "where the Newton step −f′/f″ = 0/0 is undefined, and the second-order test "
            "cannot tell an isolated minimum from a flat region of non-isolated minimisers "
            "or an inflection point."
        )
    return (
        f"f″(x) = 0 at x = {it.x:.6g} while f′(x) = {it.df:.6g}: the Newton step −f′/f″ "
        "divides by zero, so it is undefined; the quadratic model is a line with no minimum."
    )


def _parse_mode(mode: NewtonMode | str) -> NewtonMode:
    try:
        return NewtonMode(mode.value if isinstance(mode, NewtonMode) else str(mode).lower())
    except ValueError:
        choices = ", ".join(m.value for m in NewtonMode)
        raise InvalidArgumentError(f"unknown mode {mode!r}; choose one of: {choices}") from None


def _check_arguments(x0: float, tol: float, max_iter: int) -> None:
    if not math.isfinite(x0):
        raise InvalidArgumentError(f"x0 must be a finite number, got {x0!r}")
    if not (math.isfinite(tol) and tol >= 0):
        raise InvalidArgumentError(f"tol must be a finite number ≥ 0, got {tol!r}")
    if max_iter < 0:
        raise InvalidArgumentError(f"max_iter must be ≥ 0, got {max_iter!r}")


def newton(
    f: ScalarFunction,
    x0: float,
    *,
    df: ScalarFunction | None = None,
    d2f: ScalarFunction | None = None,
    tol: float = 1e-10,
    max_iter: int = 50,
    mode: NewtonMode | str = NewtonMode.MINIMIZE,
) -> NewtonResult:
    """Newton's method x ← x − f′(x)/f″(x) on a function of one variable, diagnosed.

    Each iteration costs one evaluation of f, f′, f″ (closed forms when ``df``/``d2f`` are
    given, else two float64 backward passes through ``f``). It stops with

    * CONVERGED when f′(x) = 0 exactly (with f″ > 0 when minimising) or the last step was
      at most ``tol`` · (1 + |x|);
    * ZERO_CURVATURE when f″(x) = 0, or is so small that the step exceeds
      :data:`MAX_STEP_FACTOR` · (1 + |x|);
    * NEGATIVE_CURVATURE when minimising and f″(x) < 0;
    * NO_STATIONARY_POINT when the iterates run off (see :func:`_runs_off`);
    * NON_FINITE when f, f′ or f″ is NaN or infinite; MAX_ITERATIONS after ``max_iter`` steps.

    Args:
        f: Scalar function of a 0-d float64 tensor (torch operations, for autograd).
        x0: Starting point.
        df: f′ in closed form (optional).
        d2f: f″ in closed form (optional).
        tol: Relative step length that counts as converged.
        max_iter: Largest number of Newton steps.
        mode: ``"minimize"`` (default) or ``"stationary"`` (any f′ = 0).

    Returns:
        A :class:`NewtonResult` with the iterates, a status and a message.

    Raises:
        InvalidArgumentError: Non-finite x0, negative tol or max_iter, unknown mode, or an
            f that does not return a scalar.

    Example:
        >>> result = newton(lambda x: (x - 3.0) ** 2, 10.0)
        >>> result.status.name, result.x, result.steps
        ('CONVERGED', 3.0, 1)
    """
    x0 = float(x0)
    _check_arguments(x0, float(tol), max_iter)
    mode = _parse_mode(mode)
    iterates: list[NewtonIterate] = []
    steps: list[float] = []

    def stop(status: NewtonStatus, message: str) -> NewtonResult:
        return NewtonResult(iterates[-1].x, tuple(iterates), status, message)

    x = x0
    while True:
        it = _evaluate(f, df, d2f, x)
        iterates.append(it)
        if not all(math.isfinite(v) for v in (it.f, it.df, it.d2f)):
            return stop(
                NewtonStatus.NON_FINITE,
                f"f, f′ or f″ is not finite at x = {it.x:.6g} (f = {it.f:.3g}, "
                f"f′ = {it.df:.3g}, f″ = {it.d2f:.3g}); Newton cannot continue: check f's "
                "domain or start elsewhere.",
            )
        if steps and abs(steps[-1]) <= tol * (1 + abs(x)):
            return stop(
                NewtonStatus.CONVERGED,
                f"converged to x = {x:.12g} after {len(steps)} steps (f′ = {it.df:.3g}, "
                f"f″ = {it.d2f:.6g}, last step {abs(steps[-1]):.3g}).",
            )
        if it.df == 0 and (it.d2f > 0 or (mode is NewtonMode.STATIONARY and it.d2f != 0)):
            return stop(
                NewtonStatus.CONVERGED,
                f"x = {x:.12g} is a stationary point (f′ = 0 exactly, f″ = {it.d2f:.6g}), "
                f"reached after {len(steps)} steps.",
            )
        if it.d2f == 0:
            return stop(NewtonStatus.ZERO_CURVATURE, _zero_curvature_message(it))
        if mode is NewtonMode.MINIMIZE and it.d2f < 0:
            return stop(
                NewtonStatus.NEGATIVE_CURVATURE,
                f"f″(x) = {it.d2f:.6g} < 0 at x = {x:.6g}: the Newton step goes to a maximum of "
                "the quadratic model, uphill, so it cannot minimise f from here; use "
                "mode='stationary' to follow it anyway, or start where f″ > 0.",
            )
        if _runs_off(iterates, steps):
            toward = "+∞" if steps[-1] > 0 else "−∞"
            return stop(
                NewtonStatus.NO_STATIONARY_POINT,
                f"f has no stationary point at finite x in this direction: the iterates run "
                f"off toward {toward} (x = {x:.6g} after {len(steps)} steps, each about "
                f"{abs(steps[-1]):.3g} long) while f′ keeps its sign and decays to "
                f"{it.df:.3g}, so f′ → 0 only asymptotically.",
            )
        if len(steps) >= max_iter:
            return stop(
                NewtonStatus.MAX_ITERATIONS,
                f"no convergence after {max_iter} steps: x = {x:.6g}, f′ = {it.df:.3g}, "
                f"f″ = {it.d2f:.3g}; raise max_iter or start closer to a stationary point.",
            )
        step = -it.df / it.d2f
        if not math.isfinite(step) or abs(step) > MAX_STEP_FACTOR * (1 + abs(x)):
            return stop(
                NewtonStatus.ZERO_CURVATURE,
                f"f″(x) = {it.d2f:.3g} at x = {x:.6g} is numerically zero next to "
                f"f′(x) = {it.df:.3g}: the Newton step would be {step:.3g}, so it is undefined "
                "in floating point.",
            )
        steps.append(step)
        x = x + step


def diagnose_activation(
    name: str,
    x0: float,
    *,
    max_iter: int = 50,
    tol: float = 1e-10,
    mode: NewtonMode | str = NewtonMode.MINIMIZE,
    **params: float,
) -> NewtonResult:
    """Newton on a registry activation σ (as f, with its closed-form σ′ and σ″).

    The message ends with what the registry knows of σ's stationary points, e.g. that
    ReLU's flat region x < 0 consists of non-isolated minimisers.

    Raises:
        InvalidArgumentError: Unknown activation or parameter, or a bad x0.
    """
    activation = get_activation(name, **params)
    result = newton(
        activation.value,
        x0,
        df=activation.first,
        d2f=activation.second,
        tol=tol,
        max_iter=max_iter,
        mode=mode,
    )
    if result.converged:
        return result
    note = f" {activation.name}'s stationary points: {activation.stationary_points()}."
    if activation.piecewise_linear:
        note += (
            f" {activation.name} is piecewise linear, so f″ = 0 wherever it exists and "
            "Newton cannot take a step from any x."
        )
    return NewtonResult(result.x, result.iterates, result.status, result.message + note)
