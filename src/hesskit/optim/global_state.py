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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from hesskit.errors import InvalidArgumentError
from hesskit.optim.damping import LevenbergMarquardt, levenberg_marquardt_update
from hesskit.optim.safety import record_rejection, restore_parameters, save_parameters


class GlobalStateOptimizer(Optimizer):
    """A one-group optimizer with an optimizer-wide state dict that round-trips.

    A subclass names its state with two class attributes and sets, in ``__init__``, the
    attribute ``global_state_attribute`` (a dict with a ``"steps"`` counter) and the
    attributes ``damping`` (a :class:`LevenbergMarquardt`) and ``max_rejections`` used by
    :meth:`_reject`.

    Attributes:
        global_state_key: the key of the optimizer-wide state in :meth:`state_dict`.
        global_state_attribute: the name of the attribute that holds it (public API).
    """

    global_state_key: ClassVar[str]
    global_state_attribute: ClassVar[str]
    damping: LevenbergMarquardt
    max_rejections: int

    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    @property
    def _global_state(self) -> dict[str, object]:
        return getattr(self, self.global_state_attribute)

    def _begin_step(
        self, closure: Callable[[], Tensor] | None,
        loss_closure: Callable[[], Tensor] | None = None,
    ) -> tuple[Callable[[], Tensor], Callable[[], Tensor], list[Tensor]]:
        """Check the closure, count the step, and save θ exactly (for :meth:`_reject`).

        Returns the closure, run with gradients enabled; the function that evaluates the
        loss at trial points (``loss_closure`` under ``torch.no_grad()`` when given, else
        the closure, whose gradient is then computed and ignored); and the saved
        parameters.
        """
        if closure is None:
            raise InvalidArgumentError(
                f"{type(self).__name__}.step needs a closure that recomputes the loss and "
                "calls backward()"
            )
        self._global_state["steps"] += 1
        with_grad = torch.enable_grad()(closure)
        trial_loss = with_grad if loss_closure is None else torch.no_grad()(loss_closure)
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
