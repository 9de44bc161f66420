"""The large problem the Hessian-free benchmarks share: Martens' MNIST autoencoder.

Read from ``../shared/data`` beside the repository; the synthetic CURVES autoencoder stands
in when the MNIST files are missing, so that the benchmarks still run anywhere.
"""

from __future__ import annotations

from pathlib import Path

from hesskit.errors import DataError

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_problem():
    """MNIST autoencoder, or the CURVES one when the MNIST files are missing."""
    from hesskit.problems import make_problem

    try:
        return make_problem("mnist-autoencoder", seed=0, data_dir=DATA_DIR)
    except DataError:
        return make_problem("curves-autoencoder", seed=0, data_dir=DATA_DIR)
