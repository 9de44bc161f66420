"""Optimizer-wide state with a random generator, round-tripped through ``state_dict``.

K-FAC, Sophia and AdaHessian draw random vectors or targets each step and keep counters for
the whole optimizer. :class:`SeededStateMixin` stores that dict (deep-copied, so a saved
state dict never shares tensors with the live optimizer) and the generator's state under
one documented key, so that loading a state dict resumes bit-identically.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch

from hesskit.errors import InvalidArgumentError


class SeededStateMixin:
    """For a ``torch.optim.Optimizer`` subclass with an optimizer-wide dict and a generator.

    Attributes:
        seeded_state_key: the key of the optimizer-wide state in ``state_dict()``.
        seeded_state_attribute: the name of the attribute holding that dict.
        generator: the ``torch.Generator`` whose state is saved with it.
    """

    seeded_state_key: ClassVar[str]
    seeded_state_attribute: ClassVar[str]
    generator: torch.Generator

    def state_dict(self) -> dict:
        """Torch's state dict plus the optimizer-wide state and the generator's state."""
        state = super().state_dict()  # type: ignore[misc]
        wide = copy.deepcopy(getattr(self, self.seeded_state_attribute))
        wide["generator"] = self.generator.get_state()
        state[self.seeded_state_key] = wide
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict saved by the same optimizer: resumes exactly."""
        state_dict = dict(state_dict)
        if self.seeded_state_key not in state_dict:
            raise InvalidArgumentError(
                f"the state dict has no {self.seeded_state_key!r} entry; load one saved by "
                f"{type(self).__name__}"
            )
        wide = copy.deepcopy(state_dict.pop(self.seeded_state_key))
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self.generator.set_state(wide.pop("generator"))
        setattr(self, self.seeded_state_attribute, wide)
