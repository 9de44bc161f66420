"""scikit-learn's 8×8 handwritten digits: bundled, no download; the default data set.

1797 images of 8×8 pixels with integer intensities 0..16 (the UCI "optdigits" test set as
shipped inside scikit-learn), 10 classes of 174-183 images each. Pixels are divided by 16
into [0, 1] and flattened row by row to 64 features.

Split: a permutation of the 1797 indices from ``numpy.random.default_rng(seed)``; the
first ``round(test_fraction · 1797)`` permuted cases (359 by default) form the test set,
the rest (1438) the training set, each kept in permuted order. The same ``seed`` gives the
same split on every run and platform.
"""

from __future__ import annotations

import numpy as np
import torch

from hesskit.data.dataset import Dataset, float_tensor, label_tensor
from hesskit.errors import InvalidArgumentError
from hesskit.extras import require

PIXEL_MAX = 16.0


def load_digits(
    *, dtype: torch.dtype = torch.float32, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """The digits as a :class:`Dataset`: inputs ``[n, 64]`` in [0, 1], int64 labels 0..9.

    Args:
        dtype: floating-point dtype of the inputs.
        test_fraction: share of the 1797 cases held out for testing, in (0, 1).
        seed: seed of the split permutation.

    Raises:
        InvalidArgumentError: ``test_fraction`` outside (0, 1) or a non-float ``dtype``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InvalidArgumentError(
            f"test_fraction must be strictly between 0 and 1, not {test_fraction}"
        )
    datasets = require("sklearn.datasets", "the bundled 8x8 digits")
    bunch = datasets.load_digits()
    images, labels = np.asarray(bunch.data), np.asarray(bunch.target)
    order = np.random.default_rng(seed).permutation(len(labels))
    num_test = round(test_fraction * len(labels))
    test, train = order[:num_test], order[num_test:]
    return Dataset(
        name="digits",
        description=(
            "scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes); "
            f"pixels 0-16 divided by 16 into [0, 1]; seeded split (seed={seed}): "
            f"{len(train)} training and {len(test)} test cases."
        ),
        train_x=float_tensor(images[train], dtype, scale=PIXEL_MAX),
        train_y=label_tensor(labels[train]),
        test_x=float_tensor(images[test], dtype, scale=PIXEL_MAX),
        test_y=label_tensor(labels[test]),
    )
