"""MNIST: the real files (checksums, shapes, counts, published statistics) and broken copies."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hesskit.data import load_dataset
from hesskit.data.idx import write_idx
from hesskit.data.mnist import MNIST_MD5, load_mnist, mnist_checksums_match
from hesskit.errors import DataError, InvalidArgumentError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MNIST_DIR = SHARED_DATA / "mnist"

# Copied from /work/shared/data/README.md (published values), not from hesskit.
README_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_PIXEL_MEAN = 0.1306604762738429
TRAIN_PIXEL_STD = 0.3081078038564626

needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / name).is_file() for name in README_MD5),
    reason=f"the MNIST files are not in {MNIST_DIR} (CI has them)",
)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(SHARED_DATA)


@needs_mnist
def test_files_have_the_published_md5():
    for name, digest in README_MD5.items():
        assert hashlib.md5((MNIST_DIR / name).read_bytes()).hexdigest() == digest
    assert MNIST_MD5 == README_MD5
    assert mnist_checksums_match(SHARED_DATA) == dict.fromkeys(README_MD5, True)


@needs_mnist
def test_shapes_dtypes_and_range(mnist):
    assert mnist.train_x.shape == (60000, 784) and mnist.test_x.shape == (10000, 784)
    assert mnist.train_y.shape == (60000,) and mnist.test_y.shape == (10000,)
    assert mnist.train_x.dtype == torch.float32 and mnist.train_y.dtype == torch.int64
    assert float(mnist.train_x.min()) == 0.0 and float(mnist.train_x.max()) == 1.0


@needs_mnist
def test_class_counts_match_the_published_ones(mnist):
    assert torch.bincount(mnist.train_y).tolist() == TRAIN_CLASS_COUNTS
    assert torch.bincount(mnist.test_y).tolist() == TEST_CLASS_COUNTS


@needs_mnist
def test_pixel_statistics_match_the_published_normalisation_constants(mnist):
    pixels = mnist.train_x.double()
    # float32 x/255 is within 3e-8 of the exact quotient, so the mean is exact to ~1e-8.
    assert abs(float(pixels.mean()) - TRAIN_PIXEL_MEAN) < 1e-7
    assert abs(float(pixels.std(correction=0)) - TRAIN_PIXEL_STD) < 1e-7


@needs_mnist
def test_pixels_are_the_file_bytes_divided_by_255(mnist):
    import gzip

    raw = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    first = np.frombuffer(raw, np.uint8, count=784, offset=16)
    np.testing.assert_allclose(mnist.test_x[0].numpy(), first / 255.0, rtol=0, atol=1e-7)


@needs_mnist
def test_float64_and_env_var_directory(monkeypatch):
    monkeypatch.setenv("HESSKIT_DATA_DIR", str(MNIST_DIR))
    data = load_dataset("mnist", dtype=torch.float64)
    assert data.train_x.dtype == torch.float64
    assert data.num_train == 60000


# Small files the tests write themselves -------------------------------------------------


def _write_small_mnist(directory, *, n_train=6, n_test=4, gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            directory / f"{prefix}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(
            directory / f"{prefix}-labels-idx1-ubyte{suffix}",
            rng.integers(0, 10, n, dtype=np.uint8),
        )


@pytest.mark.parametrize("gz", [True, False])
def test_small_written_files_load_with_the_right_values(tmp_path, gz):
    _write_small_mnist(tmp_path / "mnist", gz=gz)
    data = load_mnist(tmp_path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 6, dtype=np.uint8)
    np.testing.assert_allclose(data.train_x.numpy(), images.reshape(6, 784) / 255.0, atol=1e-7)
    assert data.train_y.tolist() == labels.tolist()
    assert data.test_x.shape == (4, 784)


def test_files_directly_in_data_dir_and_dotted_names(tmp_path):
    _write_small_mnist(tmp_path)
    dotted = tmp_path / "train-images-idx3-ubyte.gz"
    dotted.rename(tmp_path / "train-images.idx3-ubyte.gz")
    assert load_mnist(tmp_path).num_train == 6


def test_missing_file_says_where_to_put_it(tmp_path):
    _write_small_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        DataError, match=r"^MNIST file t10k-labels-idx1-ubyte\[\.gz\] not found .* HESSKIT_DATA_DIR"
    ):
        load_mnist(tmp_path)


def test_swapped_images_and_labels_is_a_wrong_magic_error(tmp_path):
    _write_small_mnist(tmp_path)
    images, labels = (
        tmp_path / "train-images-idx3-ubyte.gz",
        tmp_path / "train-labels-idx1-ubyte.gz",
    )
    shutil.copy(labels, images)
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte\.gz has magic number 2049 but 2051"
    ):
        load_mnist(tmp_path)


def test_truncated_images_file(tmp_path):
    _write_small_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is truncated"):
        load_mnist(tmp_path)


def test_count_mismatch_between_images_and_labels(tmp_path):
    _write_small_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(
        DataError, match=r"holds 6 images but .*train-labels-idx1-ubyte\.gz holds 5 labels"
    ):
        load_mnist(tmp_path)


def test_images_of_the_wrong_size(tmp_path):
    _write_small_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((6, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"images of size 8x8, not 28x28"):
        load_mnist(tmp_path)


def test_label_out_of_range(tmp_path):
    _write_small_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(6, 11, np.uint8))
    with pytest.raises(DataError, match=r"contains label 11, outside 0\.\.9"):
        load_mnist(tmp_path)


def test_garbage_with_gz_name(tmp_path):
    _write_small_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte\.gz is named \.gz but is not gzip"
    ):
        load_mnist(tmp_path)


def test_integer_dtype_is_rejected(tmp_path):
    _write_small_mnist(tmp_path)
    with pytest.raises(InvalidArgumentError, match="floating-point torch dtype"):
        load_mnist(tmp_path, dtype=torch.int64)
