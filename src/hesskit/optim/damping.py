"""Levenberg-Marquardt damping: adapt λ from how well the quadratic model predicted the loss.

Both second-order optimizers minimise a damped quadratic model of the loss L around θ,

    q(p) = ∇Lᵀp + ½ pᵀ(B + λI)p          (Tikhonov damping, Martens 2010 §4.1),

and judge the step p by the reduction ratio ρ = (L(θ + p) − L(θ)) / q₀(p): ρ ≈ 1 when the
model is trustworthy (λ can shrink, steps grow), ρ small or negative when it is not (λ grows,
steps shrink toward gradient descent with step 1/λ). The functions here are pure.

What Martens' released code (HFDemo ``nnet_train_2.m``, lines 1340–1353 and 1391–1396)
does, and hesskit does by default:

* the denominator is the quadratic model with the damping switched OFF (``autodamp = 0``
  around ``computeGV``): q₀(p) = ∇Lᵀp + ½ pᵀBp, B including the weight cost but not λ;
* the numerator is the objective change on the current curvature chunk;
* ρ = −∞ when that objective rose (line 1351);
* a NaN ρ raises λ like a poor one (line 1392: ``rho < 0.25 || isnan(rho)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hesskit.errors import InvalidArgumentError

MARTENS_INITIAL_DAMPING = 45.0
"""λ₀: ``initlambda = 45.0`` in HFDemo ``nnet_train_2.m`` line 116."""


@dataclass(frozen=True)
class LevenbergMarquardt:
    """The damping λ and its adaptation rule (defaults from Martens 2010, §4.1).

    Attributes:
        initial: λ at the first step: 45, ``initlambda`` of HFDemo ``nnet_train_2.m`` line
            116, for λ added to the curvature of the per-case MEAN objective (as hesskit's
            losses are normalised). Problem-dependent; the rule adapts it from any start.
        lower: ρ below this makes λ grow (§4.1; ``nnet_train_2.m`` line 1392: 1/4).
        upper: ρ above this makes λ shrink (§4.1; line 1394: 3/4).
        increase: λ ← λ · increase when ρ < lower (``boost = 1/drop``, line 102: 3/2).
        decrease: λ ← λ · decrease when ρ > upper (``drop``, line 100: 2/3).
        floor: the smallest value an increase gives, so that λ = 0 can still grow (not in
            the paper, which never starts at 0).
        ceiling: the largest value an increase gives (not in the paper: HFDemo has no bound,
            and in double precision needs none). In float32 near a minimum every predicted
            decrease can fall below the loss's rounding, ρ is then NaN at every step and the
            rule raises λ by 3/2 each time; unbounded, λ passed 1e38 after about 1,200 steps
            of stochastic HF on the digits autoencoder (step 1,100 at λ ≈ 0.1) and the
            damped products overflowed to infinity. At λ = 1e10 the step is already
            −∇L / λ to float32 precision, so a larger λ changes nothing but the overflow.
        adapt: False keeps λ fixed at ``initial`` for ablations, also after rejected steps.
        nan_raises: a NaN ρ raises λ as Martens' code does (HFDemo ``nnet_train_2.m`` line
            1392); False keeps λ (hesskit's former rule: NaN = "no information").
        floor_on_decrease: a decrease also stops at ``floor`` (K-FAC's rule, whose λ
            would otherwise fall to 4.8e-64 on a clean problem; Martens' HF decreases
            without a bound, as in HFDemo).
    """

    initial: float = MARTENS_INITIAL_DAMPING
    lower: float = 0.25
    upper: float = 0.75
    increase: float = 1.5
    decrease: float = 2.0 / 3.0
    floor: float = 1e-6
    ceiling: float = 1e10
    adapt: bool = True
    nan_raises: bool = True
    floor_on_decrease: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and self.initial >= 0):
            raise InvalidArgumentError(
                f"initial damping must be finite and ≥ 0, got {self.initial}"
            )
        if not self.lower < self.upper:
            raise InvalidArgumentError(
                f"need lower < upper for the ρ thresholds, got {self.lower} and {self.upper}"
            )
        if not (self.increase > 1 and 0 < self.decrease < 1):
            raise InvalidArgumentError(
                f"need increase > 1 and 0 < decrease < 1, got {self.increase} and {self.decrease}"
            )
        if not self.floor > 0:
            raise InvalidArgumentError(f"the damping floor must be > 0, got {self.floor}")
        if not (self.ceiling >= max(self.floor, self.initial) and self.ceiling < math.inf):
            raise InvalidArgumentError(
                f"the damping ceiling must be finite and ≥ the floor and the initial λ, "
                f"got {self.ceiling}"
            )

    def updated(self, ratio: float, damping: float) -> float:
        """The next λ from the reduction ratio ρ: THE rule of every damped optimizer.

        ρ < ``lower`` (or NaN with ``nan_raises``): :meth:`increased`; ρ > ``upper``:
        λ · ``decrease`` (not below ``floor`` with ``floor_on_decrease``; a λ already
        below it, set by hand or loaded, is kept); otherwise, a NaN ρ without
        ``nan_raises``, or ``adapt=False``: λ.

        >>> LevenbergMarquardt().updated(0.0, 1.0), LevenbergMarquardt().updated(1.0, 1.5)
        (1.5, 1.0)
        """
        if not self.adapt or (math.isnan(ratio) and not self.nan_raises):
            return damping
        if math.isnan(ratio) or ratio < self.lower:
            return self.increased(damping)
        if ratio > self.upper:
            lowered = damping * self.decrease
            return max(lowered, min(self.floor, damping)) if self.floor_on_decrease else lowered
        return damping

    def increased(self, damping: float) -> float:
        """λ after a failure: min(max(increase · λ, floor), ceiling), the one increase every
        λ rule of hesskit takes (a poor ρ here; a failed Cholesky of H + λI in
        :class:`~hesskit.optim.DampedNewton`). A λ already above the ceiling (set by hand or
        loaded) is kept, not cut; at the ceiling the result equals λ.

        >>> LevenbergMarquardt().increased(0.0)
        1e-06
        >>> LevenbergMarquardt(ceiling=100.0).increased(90.0)
        100.0
        """
        raised = max(damping * self.increase, self.floor)
        return min(raised, max(self.ceiling, damping))


def reduction_ratio(actual: float, predicted: float, resolution: float = 0.0) -> float:
    """ρ = actual / predicted: the loss change over the model's predicted change.

    Args:
        actual: L(θ + p) − L(θ).
        predicted: q(p) − q(0), negative for a step the model says descends.
        resolution: the smallest loss change that is not rounding (a few ulps of L in its
            dtype). A predicted decrease no larger than this cannot be checked against the
            loss — near a minimum in float32, L(θ + p) = L(θ) to the last bit — so ρ then
            carries no information.

    Returns:
        ρ; NaN when the predicted decrease is within ``resolution`` (no information); −∞
        when it says nothing good about the step: the objective rose (actual > 0, Martens'
        code, HFDemo ``nnet_train_2.m`` line 1351), a non-finite input, or a model that
        predicts no decrease (predicted ≥ 0). Both make λ grow under the default
        :class:`LevenbergMarquardt` rule.

    >>> reduction_ratio(-0.5, -1.0)
    0.5
    >>> reduction_ratio(0.1, -1.0)
    -inf
    >>> reduction_ratio(float("nan"), -1.0)
    -inf
    >>> reduction_ratio(0.0, -1e-12, resolution=1e-9)
    nan
    """
    if not (math.isfinite(actual) and math.isfinite(predicted)):
        return -math.inf
    if resolution > 0 and -predicted <= resolution:
        return math.nan
    if predicted >= 0 or actual > 0:
        return -math.inf
    return actual / predicted


def loss_resolution(*losses: float, dtype_eps: float) -> float:
    """A few ulps of the largest |loss|: changes below it are rounding, not curvature."""
    return 16.0 * dtype_eps * max(abs(value) for value in losses)


def levenberg_marquardt_update(
    ratio: float, damping: float, rule: LevenbergMarquardt | None = None
) -> float:
    """The next λ from the reduction ratio ρ (Martens 2010, §4.1): ``rule.updated``.

    With the default rule, ρ < 1/4 or NaN: λ ← min(max(3/2 · λ, floor), ceiling); ρ > 3/4:
    λ ← 2/3 · λ; otherwise λ is kept (HFDemo ``nnet_train_2.m`` lines 1391–1396; ``drop``
    = 2/3, ``boost`` = 1/drop, lines 100–102).

    >>> levenberg_marquardt_update(0.0, 1.0)
    1.5
    >>> levenberg_marquardt_update(1.0, 1.5)
    1.0
    >>> levenberg_marquardt_update(float("nan"), 1.0)
    1.5
    """
    return (rule or LevenbergMarquardt()).updated(ratio, damping)
