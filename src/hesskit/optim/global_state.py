"""What damped Newton and Hessian-free share beyond the family's base class
(:class:`~hesskit.optim.base.CurvatureOptimizer`, which keeps and saves their
optimizer-wide state): the start of a step (check the closure, count the step, save θ) and
the rejection (restore θ exactly, grow λ by the Levenberg-Marquardt rule, count the
non-finite rejection; see ``safety.py``).

The torch.optim contract, shared by both:

* several parameter groups, concatenated in group order into ONE flat θ (the curvature
  operator's layout); each group has an ``lr`` and a ``weight_decay``;
* weight decay wd_g is part of the objective, F(θ) = closure() + Σ_g (wd_g/2)‖θ_g‖² (as in
  Martens' code, HFDemo ``nnet_train_2.m``: ``weightcost`` in the objective, its gradient,
  the curvature and the preconditioner); the parameters' ``.grad`` are left as the closure
  made them;
* ``lr_g`` scales group g's part of the accepted step, θ_g ← θ_g + lr_g·t·p_g (t the line
  search's step size); lr = 1 is the method as published, and ``torch.optim.lr_scheduler``
  schedules change it between steps;
* ``add_param_group`` after construction is refused: the curvature callable was built over
  the parameters given at construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError
from hesskit.optim.base import CurvatureOptimizer
from hesskit.optim.damping import LevenbergMarquardt, levenberg_marquardt_update
from hesskit.optim.safety import record_rejection, restore_parameters, save_parameters
from hesskit.optim.weight_cost import weight_cost_value


class GlobalStateOptimizer(CurvatureOptimizer):
    """An optimizer over one flat θ (all groups) with λ and a Levenberg-Marquardt rule.

    A subclass names its state (``state_key``, ``state_attribute``: a dict with
    ``"steps"`` and ``"damping"``), calls ``super().__init__(params, lr=...,
    weight_decay=...)``, and sets ``damping`` (a :class:`LevenbergMarquardt`) and
    ``max_rejections``, used by :meth:`_reject`.
    """

    fixed_parameters = True
    damping: LevenbergMarquardt
    max_rejections: int

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict], *, lr: float, weight_decay: float
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def _has_weight_decay(self) -> bool:
        return any(group["weight_decay"] != 0 for group in self.param_groups)

    def _weight_cost(self) -> float:
        """Σ_g (wd_g/2)‖θ_g‖² at the current parameters (0 without weight decay)."""
        if not self._has_weight_decay():
            return 0.0
        return float(sum(weight_cost_value(group["params"], group["weight_decay"])
                         for group in self.param_groups))

    def _with_weight_decay(self, loss: float, gradient: Tensor) -> tuple[float, Tensor]:
        """F = loss + Σ_g (wd_g/2)‖θ_g‖² and ∇F = gradient + wd ⊙ θ (flat ``[N]``)."""
        if not self._has_weight_decay():
            return loss, gradient
        theta = torch.cat([p.detach().reshape(-1) for p in self._params]).to(gradient)
        decay = self._per_element("weight_decay").to(gradient)
        return loss + self._weight_cost(), gradient + decay * theta

    def _scaled_step(self, direction: Tensor) -> Tensor:
        """lr_g · p_g for every group g (the direction itself when every lr is 1)."""
        if all(group["lr"] == 1 for group in self.param_groups):
            return direction
        return direction * self._per_element("lr").to(direction.dtype)

    def _begin_step(
        self, closure: Callable[[], Tensor] | None,
        loss_closure: Callable[[], Tensor] | None = None,
    ) -> tuple[Callable[[], Tensor], Callable[[], Tensor], list[Tensor]]:
        """Check the closure, count the step, and save θ exactly (for :meth:`_reject`).

        Returns the closure, run with gradients enabled (and watched for its batch when
        ``model=`` and ``loss=`` were given); the function that evaluates the
        loss at trial points (``loss_closure`` under ``torch.no_grad()`` when given, else
        the closure, whose gradient is then computed and ignored); and the saved
        parameters.
        """
        if closure is None:
            raise InvalidArgumentError(
                f"{type(self).__name__}.step needs a closure that clears the gradients, "
                "recomputes the loss, calls backward() and returns the loss; call "
                "optimizer.step(closure) as for torch.optim.LBFGS"
            )
        self.wide_state["steps"] += 1
        with_grad = torch.enable_grad()(closure)
        trial_loss = with_grad if loss_closure is None else torch.no_grad()(loss_closure)
        if self._watch is not None:
            with_grad = lambda: self._run_closure(closure)  # noqa: E731
        return with_grad, trial_loss, save_parameters(self._params)

    def _reject(self, start: list[Tensor], what: str, loss: float) -> float:
        """Safety: restore θ exactly, grow λ, count; raises after too many in a row.

        Returns ``loss`` (the loss at the start of the step, which ``step`` returns).
        """
        restore_parameters(self._params, start)
        state = self.wide_state
        state["damping"] = levenberg_marquardt_update(-math.inf, state["damping"], self.damping)
        record_rejection(state, what, self.max_rejections)
        return loss
