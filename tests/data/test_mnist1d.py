"""MNIST-1D generated offline equals the published pickle; it is cached and RNG-neutral."""

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hesskit.data import load_dataset
from hesskit.data.cache import cache_dir, write_arrays_atomic
from hesskit.data.mnist1d import CACHE_FILE, generate_mnist1d, load_mnist1d

PUBLISHED = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist1d" / "mnist1d_data.pkl"
)
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except numpy's array reconstruction (the pickle needs no more)."""

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def generated():
    return generate_mnist1d()


@pytest.mark.skipif(not PUBLISHED.is_file(), reason=f"{PUBLISHED} is absent (CI has it)")
def test_generated_data_equals_the_published_split(generated):
    with PUBLISHED.open("rb") as file:
        published = _NumpyOnlyUnpickler(file).load()
    for key in ("x", "x_test", "t"):
        assert generated[key].shape == published[key].shape
        np.testing.assert_allclose(generated[key], published[key], rtol=0, atol=1e-12)
    for key in ("y", "y_test"):
        np.testing.assert_array_equal(generated[key], published[key])


def test_dataset_shapes_and_labels(generated):
    write_arrays_atomic(cache_dir() / CACHE_FILE, generated)  # skip a second generation
    data = load_mnist1d(dtype=torch.float64)
    assert (data.num_train, data.num_test, data.num_features) == (4000, 1000, 40)
    np.testing.assert_array_equal(data.train_x.numpy(), generated["x"])
    assert data.train_y.dtype == torch.int64 and data.num_classes == 10


def test_first_load_writes_the_cache_and_the_second_reads_it(monkeypatch, generated):
    calls = []
    monkeypatch.setattr(
        "hesskit.data.mnist1d.generate_mnist1d", lambda: calls.append(1) or generated
    )
    path = cache_dir() / CACHE_FILE
    assert not path.exists()
    first = load_dataset("mnist1d")
    assert path.is_file() and len(calls) == 1
    assert [p.name for p in path.parent.iterdir()] == [CACHE_FILE]  # no temporary left
    second = load_dataset("mnist1d")
    assert len(calls) == 1, "the cached arrays should have been used"
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    load_dataset("mnist1d", use_cache=False)
    assert len(calls) == 2


def test_unreadable_cache_file_is_rebuilt(monkeypatch, generated):
    monkeypatch.setattr("hesskit.data.mnist1d.generate_mnist1d", lambda: generated)
    path = cache_dir() / CACHE_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    data = load_mnist1d(dtype=torch.float64)
    np.testing.assert_array_equal(data.test_x.numpy(), generated["x_test"])
    assert np.load(path)["x"].shape == (4000, 40)


def test_cache_file_with_other_arrays_is_rebuilt(monkeypatch, generated):
    monkeypatch.setattr("hesskit.data.mnist1d.generate_mnist1d", lambda: generated)
    write_arrays_atomic(cache_dir() / CACHE_FILE, {"x": np.zeros(3)})
    assert load_mnist1d().num_train == 4000


def test_generation_leaves_the_global_random_state_alone():
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.random())
    random.seed(7)
    np.random.seed(7)
    generate_mnist1d()
    assert (random.random(), np.random.random()) == expected
