"""The parameters of every group of a ``torch.optim.Optimizer``, in group order."""

from __future__ import annotations

from torch import Tensor


class AllParametersMixin:
    """``_params``: every parameter of every group, in group order (the layout of the flat
    θ that the curvature optimizers concatenate)."""

    param_groups: list[dict]

    @property
    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]
