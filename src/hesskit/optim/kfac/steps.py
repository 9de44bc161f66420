"""K-FAC's schedule constants and its quadratic-model step: pure pieces of :mod:`kfac`.

All from Martens & Grosse (2015), "Optimizing Neural Networks with Kronecker-factored
Approximate Curvature", ICML; section numbers of the arXiv version (1503.05671).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.optim.damping import LevenbergMarquardt


@dataclass(frozen=True)
class KFACSchedule:
    """When K-FAC adapts what (defaults: the paper's).

    Attributes:
        initial_damping: λ₀ = 150 (§13, "λ initialised to 150", for their autoencoders).
            For a classifier trained for a few hundred steps use 0.1: from 150 the rule
            needs ~98 steps to reach λ = 1 (``benchmarks/results/kfac_classifier/``:
            32 steps on MNIST, test accuracy 0.44 at 150, 0.93 at 0.1).
        damping_interval: T₁ = 5, iterations between Levenberg-Marquardt updates of λ (§6.5).
        gamma_interval: T₂ = 20, iterations between re-choices of γ (§6.6).
        inverse_interval: T₃ = 20, iterations between refreshes of the factors' inverses
            (§8); they are also refreshed on each of the first ``initial_inverse_steps``.
        initial_inverse_steps: 3 (§8).
        max_decay: the cap of the factors' averaging weight ε = min(1 − 1/k, 0.95) (§5).
        statistics_fraction: τ₁ = 1/8, the share of the mini-batch (its first samples)
            the factor statistics are computed on (§8, §13).
        damping_floor, damping_ceiling: the bounds of λ (not in the paper; the shared
            :class:`~hesskit.optim.damping.LevenbergMarquardt` defaults 1e-6 and 1e10, whose
            docstring gives the ceiling's reason). Unbounded, λ fell to 4.8e-64 on a clean
            problem and, with a NaN loss on 9 of 10 steps, passed float32's maximum after
            ~350 steps so that the run died on clean data afterwards (issue 22).

    Checked against the authors' released TensorFlow K-FAC (github.com/tensorflow/kfac,
    ``kfac/python/ops/optimizer.py``, ``kfac/examples/autoencoder_mnist.py``): its LM
    defaults are ``damping_adaptation_interval=5`` (T₁), ``damping_adaptation_decay=0.95``
    with ω = 0.95^interval (ω₁ = (19/20)⁵), ρ thresholds 1/4 and 3/4, the quadratic model of
    ρ without λ but with the weight cost (``_INCLUDE_DAMPING_IN_QMODEL_CHANGE = False``),
    ``cov_ema_decay=0.95`` (the cap of ε); its MNIST autoencoder starts the adaptive damping
    at ``initial_damping=150`` (λ₀). That example refreshes the inverses every 5 steps
    (``inverse_update_period``), where the paper's §8 says T₃ = 20: hesskit keeps the paper.
    """

    initial_damping: float = 150.0
    damping_interval: int = 5
    gamma_interval: int = 20
    inverse_interval: int = 20
    initial_inverse_steps: int = 3
    max_decay: float = 0.95
    statistics_fraction: float = 1 / 8
    damping_floor: float = LevenbergMarquardt.floor
    damping_ceiling: float = LevenbergMarquardt.ceiling

    def __post_init__(self) -> None:
        for name in ("damping_interval", "gamma_interval", "inverse_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an integer ≥ 1, got {value!r}")
        if not (self.initial_damping > 0 and 0 <= self.max_decay < 1
                and 0 < self.statistics_fraction <= 1):
            raise InvalidArgumentError(
                "KFACSchedule needs initial_damping > 0, max_decay in [0, 1) and "
                f"statistics_fraction in (0, 1]; got {self.initial_damping}, "
                f"{self.max_decay}, {self.statistics_fraction}"
            )
        _ = self.damping_rule  # LevenbergMarquardt checks floor > 0 and λ₀ ≤ ceiling

    @property
    def omega1(self) -> float:
        """ω₁ = (19/20)^T₁, the LM factor for λ (§6.5)."""
        return (19 / 20) ** self.damping_interval

    @property
    def omega2(self) -> float:
        """ω₂ = (√(19/20))^T₂, the factor between γ candidates (§6.6)."""
        return math.sqrt(19 / 20) ** self.gamma_interval

    @property
    def damping_rule(self) -> LevenbergMarquardt:
        """λ's rule: the shared Levenberg-Marquardt object with K-FAC's constants (§6.5):
        λ₀ = ``initial_damping``, ρ thresholds 1/4 and 3/4, increase 1/ω₁, decrease ω₁
        (applied every T₁ iterations by the optimizer), floor and ceiling as above, a
        decrease stopping at the floor too; a NaN ρ
        (``hesskit.optim.damping.reduction_ratio``'s "no information") keeps λ.

        >>> rule = KFACSchedule(initial_damping=1.0).damping_rule
        >>> rule.updated(0.9, 1e-6), rule.updated(-math.inf, 1e10)
        (1e-06, 10000000000.0)
        """
        return LevenbergMarquardt(
            initial=self.initial_damping, lower=0.25, upper=0.75, increase=1 / self.omega1,
            decrease=self.omega1, floor=self.damping_floor, ceiling=self.damping_ceiling,
            nan_raises=False, floor_on_decrease=True,
        )

    def decay(self, iteration: int) -> float:
        """ε_k = min(1 − 1/k, max_decay) for iteration k ≥ 1 (§5)."""
        return min(1 - 1 / iteration, self.max_decay)

    def refresh_inverses(self, iteration: int) -> bool:
        """On the first few iterations and every T₃ (§8)."""
        return iteration <= self.initial_inverse_steps or iteration % self.inverse_interval == 0


KFAC_INITIAL_BATCH = 1000
"""m₁, the first mini-batch of the schedule (Martens & Grosse 2015, §13: m₁ = 1000)."""

KFAC_FULL_BATCH_ITERATION = 500
"""The iteration k at which the schedule reaches the full training set: b is chosen so that
m_500 = |S| (Martens & Grosse 2015, §13)."""


@dataclass(frozen=True)
class KFACBatchSchedule:
    """The mini-batch size of iteration k: m_k = min(⌈m₁ exp((k − 1)/b)⌉, |S|) (§13).

    Attributes:
        initial: m₁ (:data:`KFAC_INITIAL_BATCH`).
        full_at: the iteration where m_k reaches |S| when ``rate`` is None
            (:data:`KFAC_FULL_BATCH_ITERATION`): b = (full_at − 1) / ln(|S| / m₁).
        rate: b itself, overriding ``full_at`` (``math.inf``: m₁ for good).

    >>> schedule = KFACBatchSchedule()
    >>> [schedule.size(k, 60000) for k in (1, 2, 250, 500, 501)]
    [1000, 1009, 7715, 60000, 60000]
    """

    initial: int = KFAC_INITIAL_BATCH
    full_at: int = KFAC_FULL_BATCH_ITERATION
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.initial < 1 or self.full_at < 2 or (self.rate is not None and not self.rate > 0):
            raise InvalidArgumentError(
                f"KFACBatchSchedule needs initial ≥ 1, full_at ≥ 2 and rate > 0; got "
                f"{self.initial}, {self.full_at}, {self.rate}"
            )

    def b(self, num_data: int) -> float:
        """b for a training set of ``num_data`` cases (inf when m₁ ≥ |S|: no growth)."""
        if self.rate is not None:
            return self.rate
        if num_data <= self.initial:
            return math.inf
        return (self.full_at - 1) / math.log(num_data / self.initial)

    def size(self, iteration: int, num_data: int) -> int:
        """m_k for iteration k ≥ 1 on ``num_data`` cases."""
        if iteration < 1:
            raise InvalidArgumentError(f"iterations are counted from 1, got {iteration}")
        exponent = (iteration - 1) / self.b(num_data)
        if exponent >= math.log(max(num_data, 1) / self.initial):
            return num_data
        return min(num_data, math.ceil(self.initial * math.exp(exponent) - 1e-9))


@dataclass(frozen=True)
class QuadraticStep:
    """The minimiser δ = αΔ + μδ₀ of M(δ) = ½δᵀ(F + (λ + η)I)δ + ∇hᵀδ in span{Δ, δ₀}.

    Attributes:
        alpha, mu: the coefficients (μ = 0 without a previous update).
        model_decrease: M(δ) − M(0) with the damping (< 0), what γ is chosen by (§6.6).
    """

    alpha: float
    mu: float
    model_decrease: float


def quadratic_step(
    gradient: Tensor, direction: Tensor, previous: Tensor,
    curvature_direction: Tensor, curvature_previous: Tensor, damping: float,
) -> QuadraticStep:
    """α and μ by minimising the damped quadratic model in the 2-D span (§7, Eq. 13).

    With C = F + ηI applied as ``curvature_*`` (exact products) and λ = ``damping``,
    solves [ΔᵀCΔ + λ‖Δ‖², ΔᵀCδ₀ + λΔᵀδ₀; ·, δ₀ᵀCδ₀ + λ‖δ₀‖²] [α; μ] = −[∇hᵀΔ; ∇hᵀδ₀];
    with δ₀ = 0 (first step) or a singular system, only α (§6.4). All vectors flat ``[N]``.
    """
    def dot(a: Tensor, b: Tensor) -> float:
        return float(torch.dot(a.reshape(-1), b.reshape(-1)))

    a11 = dot(direction, curvature_direction) + damping * dot(direction, direction)
    b1 = -dot(gradient, direction)
    if dot(previous, previous) > 0:
        a12 = dot(direction, curvature_previous) + damping * dot(direction, previous)
        a22 = dot(previous, curvature_previous) + damping * dot(previous, previous)
        b2 = -dot(gradient, previous)
        det = a11 * a22 - a12 * a12
        if det > 1e-12 * abs(a11 * a22) and det > 0:
            alpha = (b1 * a22 - a12 * b2) / det
            mu = (a11 * b2 - a12 * b1) / det
            return QuadraticStep(alpha, mu, -0.5 * (alpha * b1 + mu * b2))
    alpha = b1 / a11 if a11 > 0 else 0.0
    return QuadraticStep(alpha, 0.0, -0.5 * alpha * b1)
