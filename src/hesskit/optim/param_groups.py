"""The parameters of every group of a ``torch.optim.Optimizer``, in group order."""

from __future__ import annotations

from torch import Tensor

from hesskit.describe import settings_text

STATE_ATTRIBUTES = ("kfac_state",)
"""Attributes where an optimizer keeps its optimizer-wide state besides the one its
``global_state_attribute`` names (λ, counters); ``repr`` shows their scalar entries."""


class AllParametersMixin:
    """``_params``: every parameter of every group, in group order (the layout of the flat
    θ that the curvature optimizers concatenate); and a one-line ``repr``."""

    param_groups: list[dict]

    @property
    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def __repr__(self) -> str:
        """``HessianFree(N=1210 in 4 tensors, lr=1, weight_decay=0; steps=3, damping=45)``:
        the parameter count, each group's settings and the optimizer-wide scalars."""
        count = sum(p.numel() for p in self._params)
        groups = [settings_text({k: v for k, v in group.items() if k != "params"})
                  for group in self.param_groups]
        text = f"N={count} in {len(self._params)} tensors, "
        text += groups[0] if len(groups) == 1 else " | ".join(
            f"group {i}: {g}" for i, g in enumerate(groups))
        state = self._repr_state()
        if state:
            text += f"; {settings_text(state)}"
        return f"{type(self).__name__}({text})"

    def _repr_state(self) -> dict[str, object]:
        """The scalar entries (numbers, flags, short strings) of the optimizer-wide state."""
        names = [getattr(self, "global_state_attribute", None), *STATE_ATTRIBUTES]
        for name in names:
            state = getattr(self, name, None) if name else None
            if isinstance(state, dict):
                return {key: value for key, value in state.items()
                        if isinstance(value, int | float | bool | str) and value != ""}
        return {}
