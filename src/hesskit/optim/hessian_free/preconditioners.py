"""Diagonal preconditioners for the conjugate-gradient solves of Hessian-free.

Martens 2010, §4.7: precondition CG on (B + λI) p = −∇L with

    M = [diag(Σ_i g_i ⊙ g_i) + λI]^α,     α = 0.75,

the damped diagonal of the empirical Fisher, damped by the same λ as B and raised to a power
below 1 because the empirical Fisher diagonal is a crude (over-confident) stand-in for the
diagonal of B. CG applies z = M⁻¹ r, an elementwise division: O(N) per iteration.

Σ_i g_i ⊙ g_i is the statistic RMSProp tracks. hesskit scales it like the curvature of the
total loss (``hesskit.estimators.exact_diagonal.empirical_fisher_diagonal``: c Σ_i g_i ⊙ g_i
with g_i the unscaled per-sample gradients and c the reduction factor, so that for a mean
loss it is (1/n) Σ_i g_i ⊙ g_i), which keeps λ on the same scale in B + λI and in M.

Where it comes from: Martens accumulates Σ_i g_i ⊙ g_i in the gradient's own pass (``grad2``,
HFDemo ``nnet_train_2.m`` lines 1086–1087, 1106). :func:`gradient_pass_preconditioner` does
the same where it is proved exact (:mod:`hesskit.estimators.gradient_squares`: a chain of
``nn.Linear`` layers and elementwise activations), and takes one separate per-sample pass
over the batch otherwise, which it reports so that a run can charge it;
:func:`martens_preconditioner` always takes the separate pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.estimators.exact_diagonal import empirical_fisher_diagonal
from hesskit.estimators.gradient_squares import GradientSquares
from hesskit.problem import Problem

MARTENS_EXPONENT = 0.75
"""α in M = [diag(EF) + λI]^α (Martens 2010, §4.7)."""


@dataclass(frozen=True)
class DiagonalPreconditioner:
    """M = [d(θ) + λ]^α for a diagonal statistic d computed at the current parameters.

    Attributes:
        statistic: returns d(θ) as a flat ``[N]`` tensor at the current parameters, e.g.
            the empirical-Fisher diagonal on the gradient mini-batch. In a data-parallel
            run it must return the diagonal over all ranks' data, identical on every rank
            (``empirical_fisher_diagonal`` of a distributed ``Problem`` does).
        exponent: α (Martens 2010, §4.7: 0.75; 1 is Jacobi with the statistic, 0 no
            preconditioning).
        gradient_pass: returns a context that Hessian-free enters around the closure's
            gradient pass at θ (before it asks for the statistic), for a statistic
            accumulated in that pass (:func:`gradient_pass_preconditioner`); None: none.
    """

    statistic: Callable[[], Tensor]
    exponent: float = MARTENS_EXPONENT
    gradient_pass: Callable[[], AbstractContextManager[object]] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.exponent <= 1:
            raise InvalidArgumentError(
                f"the preconditioner exponent must lie in [0, 1], got {self.exponent}; "
                "Martens uses 0.75"
            )

    def diagonal(self, damping: float | Tensor) -> Tensor:
        """m = (d + λ)^α, flat ``[N]``; entries with d_i + λ ≤ 0 get m_i = 1 (no scaling).

        ``damping`` may be a flat ``[N]`` tensor: Hessian-free passes λ + wd_i, as Martens'
        code adds the weight cost to the statistic (``precon = (grad2 + lambda +
        weightcost)^(3/4)``, HFDemo ``nnet_train_2.m`` line 1264)."""
        shifted = self.statistic().detach() + damping
        m = shifted.clamp(min=0) ** self.exponent
        return torch.where(shifted > 0, m, torch.ones_like(m))

    def around_gradient(self) -> AbstractContextManager[object]:
        """The context to run the closure's gradient pass in (a no-op without one)."""
        return contextlib.nullcontext() if self.gradient_pass is None else self.gradient_pass()

    def inverse(self, damping: float | Tensor) -> Callable[[Tensor], Tensor]:
        """The function r ↦ M⁻¹ r that CG's ``M`` argument takes."""
        m = self.diagonal(damping)
        return lambda r: r / m


def martens_preconditioner(
    problem: Problem, exponent: float = MARTENS_EXPONENT
) -> DiagonalPreconditioner:
    """Martens' preconditioner: the empirical-Fisher diagonal of ``problem``, damped, to α.

    Build ``problem`` on the gradient mini-batch (Martens' code accumulates Σ_i g_i ⊙ g_i in
    its gradient pass, ``grad2``, HFDemo ``nnet_train_2.m`` lines 1086–1087, 1106). Here it
    is a SEPARATE pass: one per-sample pass over the problem's data per step (through the
    proved chain, ≈ 1.2 gradients on Martens' MNIST autoencoder; vmapped per-sample
    gradients otherwise), which a fair comparison must count as data passed.
    """
    return DiagonalPreconditioner(lambda: empirical_fisher_diagonal(problem), exponent)


def gradient_pass_preconditioner(
    model: nn.Module,
    loss: nn.Module,
    batch: Callable[[], tuple[object, object]],
    *,
    shift: float = 0.0,
    on_extra_pass: Callable[[], None] | None = None,
    exponent: float = MARTENS_EXPONENT,
) -> DiagonalPreconditioner:
    """Martens' preconditioner with diag(EF) taken from the closure's own backward pass.

    Args:
        model: the network.
        loss: the loss the closure applies, as ``loss(model(X), y)`` on ``batch()``.
        batch: returns the current gradient batch ``(X, y)`` (read at each step).
        shift: a constant added to the statistic (the weight cost wd when the closure
            holds it, as in Martens' ``grad2 + weightcost``, line 1264; 0 when HF's own
            ``weight_decay`` adds it).
        on_extra_pass: called each time the pass was not proved (see
            :mod:`hesskit.estimators.gradient_squares`) and the statistic took a separate
            per-sample pass over ``batch()`` instead; a run charges its cases there.
        exponent: α.

    Returns:
        The preconditioner; its ``statistic.squares`` is the :class:`GradientSquares`
        (``hook_passes``, ``refused_passes``, ``reason``). Exactly the diagonal of
        :func:`martens_preconditioner`, at about a third of a gradient instead of a pass.
    """
    squares = GradientSquares(model, loss)

    def statistic() -> Tensor:
        diagonal = squares.empirical_fisher_diagonal()
        if diagonal is None:
            if on_extra_pass is not None:
                on_extra_pass()
            diagonal = empirical_fisher_diagonal(Problem(model, loss, batch()))
        return diagonal + shift if shift else diagonal

    statistic.squares = squares  # type: ignore[attr-defined]
    return DiagonalPreconditioner(
        statistic, exponent, gradient_pass=lambda: squares.capture(batch()[1])
    )
