"""Mini-batches of sample indices for a training run, with a state that checkpoints exactly."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class BatchSampler:
    """Mini-batches of indices without replacement; a fresh seeded permutation per epoch.

    Its whole state (generator, permutation, cursor) goes into checkpoints, so a resumed
    run draws the same batches. A batch that would run past the end of the permutation
    starts a new epoch (drop-last), except when ``batch_size`` covers the whole set.
    """

    def __init__(self, num_data: int, batch_size: int, seed: int) -> None:
        self.num_data, self.batch_size = num_data, min(batch_size, num_data)
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation = torch.arange(num_data)
        self.cursor = num_data  # forces a permutation on the first draw

    def next(self) -> Tensor:
        if self.batch_size == self.num_data:
            return self.permutation
        if self.cursor + self.batch_size > self.num_data:
            self.permutation = torch.randperm(self.num_data, generator=self.generator)
            self.cursor = 0
        batch = self.permutation[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "permutation": self.permutation,
                "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.permutation, self.cursor = state["permutation"], int(state["cursor"])
