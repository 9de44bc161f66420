"""Eigenvalues of a dense symmetric matrix, with the count of negative ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Spectrum:
    """All eigenvalues of a symmetric N×N matrix, ascending (``torch.linalg.eigvalsh``).

    An eigenvalue counts as negative when it is below ``-tolerance``, with
    ``tolerance = N · ε · max|λ|`` (ε the dtype's machine epsilon): the rounding error of a
    backward-stable eigensolver, so a positive semi-definite G shows no negative ones.

    Attributes:
        name: which matrix (``"H"``, ``"G"``, ``"R"``).
        values: the eigenvalues, ascending.
        tolerance: the threshold below which values are "zero" in the counts.
    """

    name: str
    values: Tensor
    tolerance: float

    @property
    def num_negative(self) -> int:
        return int((self.values < -self.tolerance).sum())

    @property
    def num_positive(self) -> int:
        return int((self.values > self.tolerance).sum())

    @property
    def num_zero(self) -> int:
        return len(self.values) - self.num_negative - self.num_positive

    def to_dict(self) -> dict:
        values = self.values.tolist()
        return {
            "name": self.name,
            "min": values[0],
            "max": values[-1],
            "num_negative": self.num_negative,
            "num_zero": self.num_zero,
            "num_positive": self.num_positive,
            "tolerance": self.tolerance,
            "values": values,
        }


def spectrum(matrix: Tensor, name: str = "H") -> Spectrum:
    """The eigenvalues of a symmetric ``matrix`` and their signs (cost O(N³))."""
    values = torch.linalg.eigvalsh(matrix)
    scale = float(values.abs().max()) if values.numel() else 0.0
    tolerance = len(values) * torch.finfo(matrix.dtype).eps * scale
    return Spectrum(name, values, tolerance)
