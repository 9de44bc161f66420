"""Mini-batches drawn without replacement from a seeded permutation kept in an optimizer's
state, so that a resumed run draws exactly what the uninterrupted one would (the generator
state, the permutation and the cursor round-trip through ``state_dict``). Used by stochastic
Hessian-free (which draws its own growing batches) and by ``hesskit train``'s K-FAC (its
scheduled mini-batches).
"""

from __future__ import annotations

import torch
from torch import Tensor


def draw_without_replacement(state: dict, num_data: int, size: int) -> Tensor:
    """``size`` indices of ``range(num_data)``: the next ones of the permutation kept in
    ``state`` (``sampler_generator``, ``sampler_permutation``, ``sampler_cursor``), or of a
    fresh one when too few remain (drop-last); all of them, in order, when size ≥ num_data."""
    if size >= num_data:
        return torch.arange(num_data)
    permutation, cursor = state["sampler_permutation"], int(state["sampler_cursor"])
    if cursor + size > permutation.numel():
        generator = torch.Generator()
        generator.set_state(state["sampler_generator"])
        permutation = torch.randperm(num_data, generator=generator)
        state["sampler_generator"] = generator.get_state()
        state["sampler_permutation"], cursor = permutation, 0
    state["sampler_cursor"] = cursor + size
    return permutation[cursor: cursor + size]
