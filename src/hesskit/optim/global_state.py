"""Optimizer-wide state for the second-order optimizers, and the rejected-step path.

``torch.optim.Optimizer`` keeps state per parameter. Damped Newton and Hessian-free also
keep state for the whole optimizer (λ, counters, the CG warm start). Rather than smuggle it
onto the first parameter (as ``torch.optim.LBFGS`` does), :class:`GlobalStateOptimizer`
keeps it in a plain dict attribute and round-trips it through ``state_dict`` /
``load_state_dict`` under a documented key, with tensors copied (never shared with the
live optimizer) and moved to the parameters' device on load.

The same class holds what both optimizers' steps share: the start (check the closure,
count the step, save θ) and the rejection (restore θ exactly, grow λ by the
Levenberg-Marquardt rule, count the non-finite rejection; see ``safety.py``).

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
from typing import ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from hesskit.errors import InvalidArgumentError
from hesskit.optim.closure_batch import ClosureBatch
from hesskit.optim.damping import LevenbergMarquardt, levenberg_marquardt_update
from hesskit.optim.param_groups import AllParametersMixin
from hesskit.optim.safety import record_rejection, restore_parameters, save_parameters
from hesskit.optim.weight_cost import weight_cost_value


class GlobalStateOptimizer(AllParametersMixin, Optimizer):
    """An optimizer over one flat θ (all groups) with an optimizer-wide state that round-trips.

    A subclass names its state with two class attributes, calls ``super().__init__(params,
    lr=..., weight_decay=...)``, and sets the attribute ``global_state_attribute`` (a dict
    with a ``"steps"`` counter) and the attributes ``damping`` (a
    :class:`LevenbergMarquardt`) and ``max_rejections`` used by :meth:`_reject`.

    Attributes:
        global_state_key: the key of the optimizer-wide state in :meth:`state_dict`.
        global_state_attribute: the name of the attribute that holds it (public API).
    """

    global_state_key: ClassVar[str]
    global_state_attribute: ClassVar[str]
    damping: LevenbergMarquardt
    max_rejections: int
    _watch: ClosureBatch | None = None
    """Set by a subclass given ``model=`` and ``loss=``: the first closure call of each
    step is watched for its batch (:class:`~hesskit.optim.closure_batch.ClosureBatch`)."""

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict], *, lr: float, weight_decay: float
    ) -> None:
        self._construction_done = False
        super().__init__(params, defaults={"lr": lr, "weight_decay": weight_decay})
        self._construction_done = True

    def add_param_group(self, param_group: dict) -> None:
        """Torch's ``add_param_group`` while constructing; refused afterwards.

        Raises:
            InvalidArgumentError: called after construction, or a negative ``lr`` or
                ``weight_decay`` in the group.
        """
        if getattr(self, "_construction_done", False):
            raise InvalidArgumentError(
                f"{type(self).__name__} cannot add a parameter group after construction: its "
                "curvature is built over the parameters it was given; construct a new "
                f"{type(self).__name__} over all the parameter groups instead"
            )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key in ("lr", "weight_decay"):
            value = group[key]
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidArgumentError(
                    f"{key} must be a finite number ≥ 0, got {value!r} in parameter group "
                    f"{len(self.param_groups) - 1}"
                )

    def _per_element(self, key: str) -> Tensor:
        """Group setting ``key`` (``lr`` or ``weight_decay``) repeated over each group's
        parameters: a flat ``[N]`` tensor in θ's layout."""
        reference = self._params[0]
        return torch.cat([
            torch.full((p.numel(),), float(group[key]), dtype=reference.dtype,
                       device=reference.device)
            for group in self.param_groups for p in group["params"]
        ])

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

    @property
    def _global_state(self) -> dict[str, object]:
        return getattr(self, self.global_state_attribute)

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
        self._global_state["steps"] += 1
        with_grad = torch.enable_grad()(closure)
        trial_loss = with_grad if loss_closure is None else torch.no_grad()(loss_closure)
        if self._watch is not None:
            watch = self._watch
            with_grad = lambda: watch.run(closure)  # noqa: E731 (runs with gradients)
        return with_grad, trial_loss, save_parameters(self._params)

    def _reject(self, start: list[Tensor], what: str, loss: float) -> float:
        """Safety: restore θ exactly, grow λ, count; raises after too many in a row.

        Returns ``loss`` (the loss at the start of the step, which ``step`` returns).
        """
        restore_parameters(self._params, start)
        state = self._global_state
        state["damping"] = levenberg_marquardt_update(-math.inf, state["damping"], self.damping)
        record_rejection(state, what, self.max_rejections)
        return loss

    def state_dict(self) -> dict:
        """Torch's state dict plus a copy of the optimizer-wide state under its key."""
        state = super().state_dict()
        state[self.global_state_key] = copy_state(self._global_state)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict`, including the optimizer-wide state (copied)."""
        state_dict = dict(state_dict)
        if self.global_state_key not in state_dict:
            raise InvalidArgumentError(
                f"the state dict has no {self.global_state_key!r} entry; load one saved by "
                f"{type(self).__name__}"
            )
        saved = state_dict.pop(self.global_state_key)
        super().load_state_dict(state_dict)
        setattr(self, self.global_state_attribute, copy_state(saved, self._params[0].device))


def copy_state(state: dict, device: torch.device | None = None) -> dict:
    """A copy of a state dict: tensors detached and cloned (moved to ``device`` if given)."""
    return {
        key: _copy_tensor(value, device) if isinstance(value, Tensor) else value
        for key, value in state.items()
    }


def _copy_tensor(value: Tensor, device: torch.device | None) -> Tensor:
    value = value.detach().clone()
    return value if device is None else value.to(device)
