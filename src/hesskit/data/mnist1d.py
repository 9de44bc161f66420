"""MNIST-1D (Greydanus & Steinbach, "Scaling down deep learning", 2020/2024), generated offline.

4000 training and 1000 test sequences of 40 floats, 10 classes. The data are made by the
``mnist1d`` package's ``make_dataset(get_dataset_args())``, which does no network I/O and
reproduces the published ``mnist1d_data.pkl`` (x to ~1e-15, y exactly). ``get_dataset``
is deliberately not used: by default it tries to download that pickle.

``make_dataset`` seeds Python's and NumPy's global random generators; this module saves
and restores both, so loading MNIST-1D does not change the caller's random streams.
Generation takes a few seconds, so the arrays are cached (see :mod:`hesskit.data.cache`).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from hesskit.data.cache import cached_arrays
from hesskit.data.dataset import Dataset, float_tensor, label_tensor
from hesskit.extras import require

CACHE_FILE = "mnist1d-default-v1.npz"
KEYS = ("x", "y", "x_test", "y_test", "t")


def generate_mnist1d() -> dict[str, np.ndarray]:
    """The default MNIST-1D split: arrays ``x [4000, 40]``, ``y``, ``x_test``, ``y_test``, ``t``."""
    data_module = require("mnist1d.data", "MNIST-1D")
    get_dataset_args, make_dataset = data_module.get_dataset_args, data_module.make_dataset
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {key: np.asarray(data[key]) for key in KEYS}


def load_mnist1d(*, dtype: torch.dtype = torch.float32, use_cache: bool = True) -> Dataset:
    """MNIST-1D as a :class:`Dataset`: inputs ``[n, 40]`` (standardised), int64 labels 0..9.

    Args:
        dtype: floating-point dtype of the inputs.
        use_cache: read/write the generated arrays in the cache directory.
    """
    arrays = cached_arrays(CACHE_FILE, generate_mnist1d, keys=KEYS, use_cache=use_cache)
    return Dataset(
        name="mnist1d",
        description=(
            "MNIST-1D (Greydanus & Steinbach), the default published split generated "
            "offline with mnist1d.data.make_dataset(get_dataset_args()): 4000 training and "
            "1000 test sequences of length 40 (standardised by the generator), labels 0-9."
        ),
        train_x=float_tensor(arrays["x"], dtype),
        train_y=label_tensor(arrays["y"]),
        test_x=float_tensor(arrays["x_test"], dtype),
        test_y=label_tensor(arrays["y_test"]),
    )
