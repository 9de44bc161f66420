"""``Dataset``: a train/test split of a data set as tensors, with its name and provenance.

Also the two conversions every loader shares: :func:`float_tensor` (inputs in the
caller's floating-point dtype) and :func:`label_tensor` (int64 class labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hesskit.errors import InvalidArgumentError


@dataclass(frozen=True)
class Dataset:
    """A data set held in memory, split into a training and a test set.

    Attributes:
        name: the registry name (``"digits"``, ``"mnist"``, ``"curves-synthetic"``, ...).
        description: one paragraph saying where the data came from and how it was scaled,
            split or generated (and, for substitutes, what it is a substitute for).
        train_x: inputs ``[N_train, D]``, floating point, one flattened case per row.
        train_y: integer class labels ``[N_train]`` (int64), or ``None`` for unlabelled data
            (the CURVES images, which are used as autoencoder targets).
        test_x: inputs ``[N_test, D]``.
        test_y: labels ``[N_test]`` or ``None``.
    """

    name: str
    description: str
    train_x: Tensor
    train_y: Tensor | None
    test_x: Tensor
    test_y: Tensor | None

    @property
    def num_features(self) -> int:
        """D, the length of one flattened input."""
        return int(self.train_x.shape[1])

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_x.shape[0])

    @property
    def num_classes(self) -> int | None:
        """Number of classes (max label + 1), or ``None`` for unlabelled data."""
        if self.train_y is None:
            return None
        return int(self.train_y.max()) + 1

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.train_x.shape)}, "
            f"test={tuple(self.test_x.shape)}, dtype={self.train_x.dtype}, "
            f"labelled={self.train_y is not None})"
        )


def float_tensor(array: np.ndarray, dtype: torch.dtype, *, scale: float = 1.0) -> Tensor:
    """``array / scale`` as a tensor of the floating-point ``dtype`` every loader accepts.

    Raises:
        InvalidArgumentError: ``dtype`` is not a floating-point torch dtype.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgumentError(
            f"dtype must be a floating-point torch dtype such as torch.float32, not {dtype!r}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    return tensor / scale if scale != 1.0 else tensor


def label_tensor(array: np.ndarray) -> Tensor:
    """Class labels as an int64 tensor (what ``nn.CrossEntropyLoss`` expects)."""
    return torch.from_numpy(np.asarray(array, dtype=np.int64).copy())
