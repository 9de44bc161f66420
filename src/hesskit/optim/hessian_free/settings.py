"""Settings of Hessian-free's pieces, with Martens' values as defaults (each cited).

Sources: Martens (2010), "Deep learning via Hessian-free optimization", ICML, and his
released HFDemo code (``nnet_train_2.m``, ``conjgrad_1.m``; line numbers of the original
release).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hesskit.errors import InvalidArgumentError
from hesskit.solvers.cg import (
    MARTENS_FIRST_SNAPSHOT,
    MARTENS_PROGRESS_TOL,
    floor_gap,
    martens_gap,
)

MARTENS_MAX_CG_ITERATIONS = 250
"""``maxiters = 250`` (HFDemo ``nnet_train_2.m`` line 1255; §4.4 of the paper)."""

MARTENS_WARM_START_DECAY = 0.95
"""``decay = 0.95``: CG starts from 0.95 × the previous solution (``nnet_demo_2.m``; applied
as ``ch = conv(decay)*ch``, ``nnet_train_2.m`` line 1244; §4.5)."""


@dataclass(frozen=True)
class CGSettings:
    """The inner conjugate-gradient solve of each step.

    Attributes:
        max_iterations: iteration cap (:data:`MARTENS_MAX_CG_ITERATIONS`).
        progress_tol: ε of the relative-progress stopping rule (§4.4; ``tolerance = 5e-4``,
            ``conjgrad_1.m`` line 4).
        progress_gap: i ↦ k, the rule's gap: max(10, ⌈0.1 i⌉) (``conjgrad_1.m`` line 66,
            :func:`~hesskit.solvers.cg.martens_gap`); ``floor_gap`` is hesskit's former
            max(10, ⌊0.1 i⌋) (ablation).
        rtol: residual rule ‖r‖ ≤ rtol·‖∇L‖ (0: off, as in Martens' code, which relies on
            the progress rule alone).
        snapshot_growth: γ, keep the iterates ⌈i₀·γ^j⌉ for backtracking (§4.6;
            ``imult = 1.3``, ``conjgrad_1.m`` line 14).
        first_snapshot: i₀ (``inext = 5``, ``conjgrad_1.m`` line 13: iterates 5, 7, 9, 11,
            15, 19, 25, …); 1 is hesskit's former schedule 1, 2, 3, 4, 5, 7, … (ablation).
        warm_start_decay: start CG from this times the previous solution
            (:data:`MARTENS_WARM_START_DECAY`; 0 starts from zero).
    """

    max_iterations: int = MARTENS_MAX_CG_ITERATIONS
    progress_tol: float = MARTENS_PROGRESS_TOL
    progress_gap: Callable[[int], int] = martens_gap
    rtol: float = 0.0
    snapshot_growth: float = 1.3
    first_snapshot: float = MARTENS_FIRST_SNAPSHOT
    warm_start_decay: float = MARTENS_WARM_START_DECAY

    def __post_init__(self) -> None:
        if self.max_iterations < 1 or not 0 <= self.warm_start_decay <= 1:
            raise InvalidArgumentError(
                "need max_iterations ≥ 1 and 0 ≤ warm_start_decay ≤ 1, got "
                f"{self.max_iterations} and {self.warm_start_decay}"
            )


@dataclass(frozen=True)
class RatioSettings:
    """How the reduction ratio ρ = actual / predicted that drives λ is measured.

    Attributes:
        on_curvature_chunk: the actual change F(θ + p) − F(θ) on the curvature chunk (the
            data B was built on; HFDemo ``nnet_train_2.m`` lines 1340–1341, 1350), when the
            ``curvature`` callable returns a
            :class:`~hesskit.optim.hessian_free.chunks.CurvatureChunk` with a ``loss``; False
            (or no chunk loss): on the gradient batch, reusing the
            backtracking's value (hesskit's former rule).
        undamped_model: the predicted change is the model WITHOUT damping,
            q₀(p) = ∇Fᵀp + ½ pᵀBp (``autodamp = 0`` around ``computeGV``, lines 1347–1349;
            one extra curvature product); False: CG's damped model
            ∇Fᵀp + ½ pᵀ(B + λI)p (hesskit's former rule, which overstates ρ by
            q₀/q_λ ≈ 1.5–2 on the digits autoencoder).
    """

    on_curvature_chunk: bool = True
    undamped_model: bool = True


HF_CG = CGSettings()
HF_RATIO = RatioSettings()
PREVIOUS_CG = CGSettings(first_snapshot=1, progress_gap=floor_gap)
"""hesskit's former CG settings (snapshots from iterate 1, the progress rule's gap rounded
down), for ablations."""
PREVIOUS_RATIO = RatioSettings(on_curvature_chunk=False, undamped_model=False)
"""hesskit's former ρ (gradient batch over the damped model), for ablations."""
