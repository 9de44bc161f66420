"""Damped Newton with the exact dense Hessian, for models small enough to hold H (N×N).

Each step minimises the damped quadratic model around θ,

    q(p) = ∇Lᵀp + ½ pᵀ(H̃ + λI)p,     p = −(H̃ + λI)⁻¹ ∇L,

(O(N³) time, at most 3 N² numbers of memory), where H̃ depends on how indefinite Hessians
are handled (:class:`Indefinite`):

* ``DAMPING``: H̃ = H, solved by Cholesky; while H + λI is not positive definite, λ grows
  by the LM rule's increase 3/2 (from at least the floor, at most the ceiling:
  :meth:`LevenbergMarquardt.increased`), so the step is a descent direction
  (Levenberg-Marquardt alone); none at the ceiling: the step is rejected;
* ``SADDLE_FREE``: H̃ = |H| = V |Λ| Vᵀ (Dauphin et al. 2014): negative-curvature directions
  are followed downhill instead of toward the saddle; eigen-directions with |Λ| + λ below
  the rank tolerance are left out (pseudo-inverse).

The step is taken when it lowers the loss (ρ > 0) and rejected otherwise (parameters
restored exactly); λ follows the Levenberg-Marquardt rule on ρ = actual / predicted
reduction (``damping.py``; Martens 2010 §4.1, Nocedal & Wright §10.3). On a strictly convex
quadratic with λ = 0 the first step lands on the minimiser.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from hesskit.errors import InvalidArgumentError
from hesskit.memory import check_dense_fits as check_memory
from hesskit.operators import hessian_operator
from hesskit.optim.closure_batch import closure_or_given
from hesskit.optim.damping import (
    LevenbergMarquardt,
    levenberg_marquardt_update,
    loss_resolution,
    reduction_ratio,
)
from hesskit.optim.global_state import GlobalStateOptimizer
from hesskit.optim.safety import (
    DEFAULT_MAX_REJECTIONS,
    flat_gradient,
    init_rejection_state,
    is_finite,
    loss_value,
    move_parameters,
    record_acceptance,
    record_rejection,
    restore_parameters,
)
from hesskit.problem import Problem

STATE_KEY = "damped_newton"
"""Key of the optimizer-wide state in :meth:`DampedNewton.state_dict`."""

NEWTON_DAMPING = LevenbergMarquardt(initial=0.0, floor=1e-4, nan_raises=False)
"""Start as pure Newton (λ = 0); the first increase goes to 1e-4; a NaN ρ (a predicted
decrease below rounding, see ``reduction_ratio``) keeps λ."""

MAX_DAMPING_RAISES = 100
"""Cholesky attempts per step while raising λ to make H + λI positive definite."""


class Indefinite(enum.Enum):
    """What a Newton step does where the Hessian has negative eigenvalues."""

    DAMPING = "damping"
    """Raise λ until H + λI is positive definite (Levenberg-Marquardt)."""

    SADDLE_FREE = "saddle_free"
    """Use |H| = V|Λ|Vᵀ, absolute eigenvalues (saddle-free Newton, Dauphin et al. 2014)."""


class DampedNewton(GlobalStateOptimizer):
    """Newton's method with the exact Hessian and Levenberg-Marquardt damping.

    Args:
        params: the parameters, one or several groups; concatenated in group order they are
            the Hessian's rows (pass ``model.parameters()`` for a ``Problem`` built from the
            same model). A group may set ``lr`` and ``weight_decay``.
        model, loss: the network and the loss module the closure calls: the Hessian is
            then the exact dense Hessian of the closure's batch (read from its calls,
            :class:`~hesskit.optim.closure_batch.ClosureBatch`) at the current parameters.
        hessian: instead of ``model`` and ``loss``: a ``Problem`` (its exact dense Hessian
            at the current parameters), or a function returning the N×N Hessian at the
            current parameters.
        damping: λ and its rule; default starts at λ = 0 (pure Newton).
        indefinite: :class:`Indefinite` handling of negative eigenvalues.
        lr: default ``lr`` of the groups: the accepted step of group g is lr_g·p_g (1: the
            Newton step; ``torch.optim.lr_scheduler`` changes it between steps). ρ judges
            the full step p.
        weight_decay: default ``weight_decay`` wd_g of the groups: (wd_g/2)‖θ_g‖² added to
            the objective, wd_g θ_g to the gradient, wd_g to the Hessian's diagonal. Leave
            it 0 when the closure already adds the weight cost.
        max_rejections: consecutive non-finite steps before ``NonFiniteError``.

    Raises:
        TooLargeError: the dense Hessian of ``hessian`` (a Problem) would not fit in memory.

    The closure, as for ``torch.optim.LBFGS``, must clear the gradients, compute the loss,
    call ``backward()`` and return the loss, on the same data as the Hessian. It is called
    twice per step: at θ (loss and gradient) and at θ + p (the loss, to compute ρ; its
    gradient is ignored). The Hessian is built once per step, at θ. ``step()`` without a
    closure raises ``InvalidArgumentError``; ``step`` returns F(θ) at the start of the step
    (the closure's loss plus the weight decay given here) as a 0-d tensor. The optional
    ``loss_closure`` of :meth:`step` returns the same loss without ``backward()``; when given,
    it evaluates θ + p under ``torch.no_grad()`` (a forward pass instead of a gradient).

    State: the optimizer-wide state is ``self.newton_state``, and appears in
    :meth:`state_dict` under ``"damped_newton"`` with keys ``damping``, ``steps``,
    ``accepted_steps``, ``rejected_steps`` (no decrease), ``nonfinite_rejections``,
    ``consecutive_nonfinite``, ``last_ratio``.
    """

    state_key = STATE_KEY
    state_attribute = "newton_state"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1.0,
        *,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        hessian: Problem | Callable[[], Tensor] | None = None,
        damping: LevenbergMarquardt = NEWTON_DAMPING,
        indefinite: Indefinite = Indefinite.DAMPING,
        weight_decay: float = 0.0,
        max_rejections: int = DEFAULT_MAX_REJECTIONS,
    ) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        if not isinstance(indefinite, Indefinite):
            raise InvalidArgumentError(
                f"indefinite must be an Indefinite member, got {indefinite!r}"
            )
        num_params = sum(p.numel() for p in self._params)
        self._watch, hessian = closure_or_given(
            model, loss, hessian, self._params, "DampedNewton",
            "hessian= (a Problem or a function returning H)", _dense_hessian)
        if isinstance(hessian, Problem):
            check_dense_fits(hessian.num_params, hessian.dtype)
            problem = hessian
            hessian = lambda: _dense_hessian(problem)  # noqa: E731
        else:
            check_dense_fits(num_params, self._params[0].dtype)
        self.hessian = hessian
        self.damping = damping
        self.indefinite = indefinite
        self.max_rejections = max_rejections
        self.newton_state: dict[str, object] = {
            "damping": float(damping.initial),
            "steps": 0,
            "accepted_steps": 0,
            "rejected_steps": 0,
            "last_ratio": math.nan,
        }
        init_rejection_state(self.newton_state)

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        loss_closure: Callable[[], Tensor] | None = None,
    ) -> Tensor:
        """One damped Newton step; returns F(θ) at its start as a detached 0-d tensor.

        ``loss_closure`` (optional): the loss on the same data without ``backward()``, for
        the trial point θ + p.
        """
        closure, trial_closure, start = self._begin_step(closure, loss_closure)
        loss = self._step(closure, trial_closure, start)
        reference = self._params[0]
        return torch.tensor(loss, dtype=reference.dtype, device=reference.device)

    def _objective_and_gradient(self, closure: Callable[[], Tensor]) -> tuple[float, Tensor]:
        """F(θ) = closure() + Σ_g (wd_g/2)‖θ_g‖² and ∇F = .grad + wd ⊙ θ."""
        loss = loss_value(closure())
        gradient = flat_gradient(self._params)
        return self._with_weight_decay(loss, gradient)

    def _step(
        self, closure: Callable[[], Tensor], trial_closure: Callable[[], Tensor],
        start: list[Tensor],
    ) -> float:
        state = self.newton_state
        loss, gradient = self._objective_and_gradient(closure)
        if not is_finite(loss, gradient):
            return self._reject(start, "the loss or its gradient", loss)
        H = self._hessian(gradient)
        if not is_finite(H):
            return self._reject(start, "the Hessian", loss)
        if self._has_weight_decay():
            H = H + torch.diag(self._per_element("weight_decay").to(H))
        direction, predicted = self._direction(H, gradient)
        move_parameters(self._params, start, direction)
        trial = loss_value(trial_closure()) + self._weight_cost()
        resolution = loss_resolution(loss, trial, dtype_eps=torch.finfo(gradient.dtype).eps)
        ratio = reduction_ratio(trial - loss, predicted, resolution)
        state["last_ratio"] = ratio
        state["damping"] = levenberg_marquardt_update(ratio, state["damping"], self.damping)
        if ratio > 0:
            state["accepted_steps"] += 1
            record_acceptance(state)
            move_parameters(self._params, start, self._scaled_step(direction))
            return loss
        restore_parameters(self._params, start)
        if not is_finite(trial, direction):
            record_rejection(state, "the loss at the Newton step", self.max_rejections)
        else:
            state["rejected_steps"] += 1
        return loss

    def _hessian(self, gradient: Tensor) -> Tensor:
        H = self.hessian().detach()
        n = gradient.numel()
        if H.shape != (n, n):
            raise InvalidArgumentError(
                f"the Hessian is {tuple(H.shape)} but the optimizer has {n} parameters; "
                "build it from the same model"
            )
        return H.to(gradient.dtype)

    def _direction(self, H: Tensor, gradient: Tensor) -> tuple[Tensor, float]:
        """p = −(H̃ + λI)⁻¹∇L and the predicted change q(p) = ½∇Lᵀp (since (H̃+λI)p = −∇L).

        Solved in float64 (float32 factorisations fail on the many near-zero eigenvalues of
        ReLU networks), then cast back to the parameters' dtype.
        """
        H64, g64 = H.to(torch.float64), gradient.to(torch.float64)
        H64 = 0.5 * (H64 + H64.T)
        if self.indefinite is Indefinite.SADDLE_FREE:
            direction = self._saddle_free_direction(H64, g64, H.dtype)
        else:
            direction = self._damped_direction(H64, g64)
        return direction.to(gradient.dtype), 0.5 * float(g64 @ direction)

    def _damped_direction(self, H: Tensor, g: Tensor) -> Tensor:
        """Cholesky of H + λI (N³/3 flops); while it fails (not positive definite), λ grows
        by the rule's one increase, :meth:`LevenbergMarquardt.increased` (× increase, at
        least the floor, at most the ceiling), and the new λ is kept. When H + λI is not
        positive definite even at the ceiling, the direction is 0 and the step rejected."""
        damping = float(self.newton_state["damping"])
        eye = torch.eye(len(g), dtype=H.dtype, device=H.device)
        for _ in range(MAX_DAMPING_RAISES):
            factor, info = torch.linalg.cholesky_ex(H + damping * eye)
            if int(info) == 0:
                self.newton_state["damping"] = damping
                return -torch.cholesky_solve(g[:, None], factor)[:, 0]
            raised = self.damping.increased(damping)
            if not self.damping.adapt or raised == damping:
                break
            damping = raised
        self.newton_state["damping"] = damping  # the largest λ tried, ≤ the ceiling
        return torch.zeros_like(g)  # no positive-definite H + λI: the step is rejected

    def _saddle_free_direction(self, H: Tensor, g: Tensor, dtype: torch.dtype) -> Tensor:
        """−V (|Λ| + λ)⁻¹ Vᵀ g by eigendecomposition (≈ 9 N³ flops); directions with
        |Λ| + λ below the rank tolerance N·eps·max|Λ| are left out."""
        eigenvalues, vectors = torch.linalg.eigh(H)
        tol = eigenvalues.abs().max().clamp(min=torch.finfo(dtype).tiny) * (
            len(eigenvalues) * torch.finfo(dtype).eps
        )
        curvature = eigenvalues.abs() + float(self.newton_state["damping"])
        keep = curvature > tol
        coefficients = torch.where(keep, -(vectors.T @ g) / curvature, 0.0)
        return vectors @ coefficients


def check_dense_fits(num_params: int, dtype: torch.dtype) -> None:
    """Raise TooLargeError when 3 N² numbers (H, eigenvectors, workspace) exceed hesskit's
    one memory budget (:mod:`hesskit.memory`)."""
    check_memory(
        num_params, dtype, matrices=3,
        what="damped Newton (the dense Hessian, its eigenvectors and a workspace)",
        instead="use HessianFree, which needs only curvature-vector products, or a smaller "
        "model",
    )


def _dense_hessian(problem: Problem) -> Tensor:
    """The exact N×N Hessian of the problem's total loss at its current parameters, from the
    Hessian operator (the closed form for a proved Linear chain, ≈ 2·n·N² flops; N products
    otherwise), which refuses with ``TooLargeError`` before allocating if it would not fit.
    """
    return hessian_operator(problem).to_dense()
