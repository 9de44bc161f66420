"""Optimizer-wide state with a random generator, round-tripped through ``state_dict``; and
the one all-reduce that sums a rank's loss and gradient for a data-parallel step.

K-FAC, Sophia and AdaHessian draw random vectors or targets each step and keep counters for
the whole optimizer. :class:`SeededStateMixin` stores that dict (deep-copied, so a saved
state dict never shares tensors with the live optimizer) and the generator's state under
one documented key, so that loading a state dict resumes bit-identically.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from typing import ClassVar, TypeVar

import torch

from hesskit.distributed import all_reduce_sum
from hesskit.errors import InvalidArgumentError

Key = TypeVar("Key", bound=Hashable)


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


def summed_over_ranks(
    loss: torch.Tensor, tensors: dict[Key, torch.Tensor]
) -> tuple[torch.Tensor, dict[Key, torch.Tensor]]:
    """A rank's loss share and per-parameter tensors (gradients, Hessian products) summed over
    the ``torch.distributed`` ranks in ONE all-reduce of a packed buffer (as Hessian-free
    sums the closure's loss and gradient); unchanged without a process group."""
    keys = list(tensors)
    reference = tensors[keys[0]] if keys else loss
    packed = torch.cat([loss.detach().reshape(1).to(reference.dtype),
                        *(tensors[k].reshape(-1) for k in keys)])
    all_reduce_sum(packed)
    pieces = torch.split(packed[1:], [tensors[k].numel() for k in keys])
    return packed[0], {k: piece.view_as(tensors[k]) for k, piece in zip(keys, pieces, strict=True)}
