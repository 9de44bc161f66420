"""The one base class of hesskit's optimizers, and the one all-reduce of a data-parallel step.

``torch.optim.Optimizer`` keeps state per parameter. The curvature optimizers also keep
state for the whole optimizer (λ, γ, counters, Kronecker factors, the CG warm start) and
most draw random vectors or targets. Rather than smuggle that onto the first parameter (as
``torch.optim.LBFGS`` does), :class:`CurvatureOptimizer` keeps it in one documented dict
attribute and round-trips it, with the state of the optimizer's random generator, through
``state_dict`` / ``load_state_dict`` under one documented key: tensors deep-copied (a saved
state dict never shares memory with the live optimizer) and moved to the parameters'
device on load, so that loading resumes bit-identically.

What every optimizer of the family shares, here once:

* ``_params``: every parameter of every group, in group order (the layout of the flat θ
  that the curvature optimizers concatenate), and a one-line ``repr`` with the optimizer-wide
  scalars;
* the optimizer-wide state and its generator, saved and loaded;
* the closure: run with gradients enabled and, for an optimizer given ``model=`` and
  ``loss=``, watched for its batch (:class:`~hesskit.optim.closure_batch.ClosureBatch`);
* ``add_param_group`` refused after construction by an optimizer whose curvature is built
  over the parameters it was given (``fixed_parameters``);
* :func:`summed_over_ranks`: a rank's loss share and per-parameter tensors summed over the
  ``torch.distributed`` ranks in ONE all-reduce of a packed buffer.

Step rejection (``safety.py``), the damping rule (``damping.py``) and the weight cost
(``weight_cost.py``) have their own homes; the damped, flat-θ optimizers (Newton and
Hessian-free) add theirs in :class:`~hesskit.optim.global_state.GlobalStateOptimizer`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Iterable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from hesskit.describe import settings_text
from hesskit.distributed import all_reduce_sum
from hesskit.errors import InvalidArgumentError
from hesskit.optim.closure_batch import ClosureBatch

Key = TypeVar("Key", bound=Hashable)


class CurvatureOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` with an optimizer-wide state that round-trips.

    A subclass names its state with two class attributes, calls ``super().__init__(params,
    defaults)`` and then sets the dict attribute ``state_attribute`` (and ``generator``,
    when it draws random numbers; ``_watch`` when given ``model=`` and ``loss=``).

    Attributes:
        state_key: the key of the optimizer-wide state in :meth:`state_dict`.
        state_attribute: the name of the attribute that holds it (public API, e.g.
            ``kfac_state``).
        fixed_parameters: refuse ``add_param_group`` after construction (the curvature
            was built over the parameters given), and check each group's ``lr`` and
            ``weight_decay``.
    """

    state_key: ClassVar[str]
    state_attribute: ClassVar[str]
    fixed_parameters: ClassVar[bool] = False
    generator: torch.Generator | None = None
    _watch: ClosureBatch | None = None

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict) -> None:
        self._construction_done = False
        super().__init__(params, defaults)
        self._construction_done = True

    @property
    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def wide_state(self) -> dict[str, Any]:
        """The optimizer-wide state (the dict ``state_attribute`` names)."""
        return getattr(self, self.state_attribute)

    def add_param_group(self, param_group: dict) -> None:
        """Torch's ``add_param_group``; refused after construction when
        ``fixed_parameters``.

        Raises:
            InvalidArgumentError: called after construction of a ``fixed_parameters``
                optimizer, or a negative ``lr`` or ``weight_decay`` in its group.
        """
        name = type(self).__name__
        if self.fixed_parameters and getattr(self, "_construction_done", False):
            raise InvalidArgumentError(
                f"{name} cannot add a parameter group after construction: its curvature is "
                f"built over the parameters it was given; construct a new {name} over all "
                "the parameter groups instead"
            )
        super().add_param_group(param_group)
        if not self.fixed_parameters:
            return
        group = self.param_groups[-1]
        for key in ("lr", "weight_decay"):
            value = group[key]
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidArgumentError(
                    f"{key} must be a finite number ≥ 0, got {value!r} in parameter group "
                    f"{len(self.param_groups) - 1}"
                )

    def _per_element(self, key: str, like: Tensor | None = None) -> Tensor:
        """Group setting ``key`` (``lr``, ``weight_decay``) repeated over each group's
        parameters: a flat ``[N]`` tensor in θ's layout, with ``like``'s dtype and device
        (default the first parameter's)."""
        like = self._params[0] if like is None else like
        return torch.cat([
            torch.full((p.numel(),), float(group[key]), dtype=like.dtype, device=like.device)
            for group in self.param_groups for p in group["params"]
        ])

    def _run_closure(self, closure: Callable[[], Tensor]) -> Tensor:
        """The closure's loss, computed with gradients enabled (and its batch recorded
        when the optimizer watches it)."""
        if self._watch is not None:
            return self._watch.run(closure)
        with torch.enable_grad():
            return closure()

    def state_dict(self) -> dict:
        """Torch's state dict plus a deep copy of the optimizer-wide state (with the
        generator's state under ``"generator"``) under :attr:`state_key`."""
        state = super().state_dict()
        wide = copy.deepcopy(self.wide_state)
        if self.generator is not None:
            wide["generator"] = self.generator.get_state()
        state[self.state_key] = wide
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict` saved by the same optimizer: resumes exactly.

        Raises:
            InvalidArgumentError: the state dict has no entry under :attr:`state_key`.
        """
        state_dict = dict(state_dict)
        if self.state_key not in state_dict:
            raise InvalidArgumentError(
                f"the state dict has no {self.state_key!r} entry; load one saved by "
                f"{type(self).__name__}"
            )
        wide = copy.deepcopy(state_dict.pop(self.state_key))
        super().load_state_dict(state_dict)
        if self.generator is not None:
            self.generator.set_state(wide.pop("generator"))
        device = self._params[0].device
        setattr(self, self.state_attribute, {
            k: v.to(device) if isinstance(v, Tensor) else v for k, v in wide.items()})

    def __repr__(self) -> str:
        """``HessianFree(N=1210 in 4 tensors, lr=1, weight_decay=0; steps=3, damping=45)``:
        the parameter count, each group's settings and the optimizer-wide scalars."""
        count = sum(p.numel() for p in self._params)
        groups = [settings_text({k: v for k, v in group.items() if k != "params"})
                  for group in self.param_groups]
        text = f"N={count} in {len(self._params)} tensors, "
        text += groups[0] if len(groups) == 1 else " | ".join(
            f"group {i}: {g}" for i, g in enumerate(groups))
        scalars = self._repr_state()
        if scalars:
            text += f"; {settings_text(scalars)}"
        return f"{type(self).__name__}({text})"

    def _repr_state(self) -> dict[str, object]:
        """The scalar entries (numbers, flags, short strings) of the optimizer-wide state."""
        return {key: value for key, value in getattr(self, self.state_attribute, {}).items()
                if isinstance(value, int | float | bool | str) and value != ""}


def summed_over_ranks(
    loss: Tensor, tensors: dict[Key, Tensor]
) -> tuple[Tensor, dict[Key, Tensor]]:
    """A rank's loss share and per-key tensors (gradients, Hessian products) summed over
    the ``torch.distributed`` ranks in ONE all-reduce of a packed buffer; unchanged without
    a process group. The loss comes back in the tensors' dtype."""
    keys = list(tensors)
    reference = tensors[keys[0]] if keys else loss
    packed = torch.cat([loss.detach().reshape(1).to(reference.dtype),
                        *(tensors[k].reshape(-1) for k in keys)])
    all_reduce_sum(packed)
    pieces = torch.split(packed[1:], [tensors[k].numel() for k in keys])
    return packed[0], {k: piece.view_as(tensors[k]) for k, piece in zip(keys, pieces, strict=True)}
