"""MNIST from the four standard IDX files, checked strictly, pixels scaled to [0, 1].

The files are the original distribution (LeCun, Cortes & Burges), gzip-compressed or not:

    train-images-idx3-ubyte[.gz]   magic 2051, 60000 × 28 × 28 uint8
    train-labels-idx1-ubyte[.gz]   magic 2049, 60000 uint8 in 0..9
    t10k-images-idx3-ubyte[.gz]    magic 2051, 10000 × 28 × 28 uint8
    t10k-labels-idx1-ubyte[.gz]    magic 2049, 10000 uint8 in 0..9

(names with a dot before ``idx``, ``train-images.idx3-ubyte``, are accepted too). They are
looked up in ``<data_dir>/mnist/`` and then ``<data_dir>/`` (see
:func:`hesskit.data.cache.resolve_data_dir`). Nothing is downloaded: a missing file is a
:class:`~hesskit.errors.DataError` that says where to put it.

Published MD5 checksums of the ``.gz`` files are in :data:`MNIST_MD5`; the loader does not
hash the files on every load (the header, size and label checks catch damage), but
:func:`mnist_checksums_match` does on request.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from hesskit.data.cache import DATA_DIR_ENV, resolve_data_dir
from hesskit.data.dataset import Dataset, float_tensor, label_tensor
from hesskit.data.idx import read_idx
from hesskit.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IMAGE_SIDE = 28
NUM_CLASSES = 10
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""MD5 of the original gzip files, as widely published."""

DESCRIPTION = (
    "MNIST handwritten digits (LeCun, Cortes & Burges), the standard 60000/10000 split "
    "from the original IDX files; 28x28 images flattened row by row to 784 features, "
    "pixels divided by 255 into [0, 1]; labels 0-9."
)


def find_mnist_file(directory: str | Path, stem: str) -> Path:
    """The path of MNIST file ``stem`` (e.g. ``"train-images-idx3-ubyte"``) under ``directory``.

    Tries ``directory/mnist`` then ``directory``, each with ``.gz`` and without, and the
    dotted spelling ``train-images.idx3-ubyte``.

    Raises:
        DataError: no candidate exists.
    """
    directory = Path(directory)
    dotted = stem.replace("-idx", ".idx")
    for folder in (directory / "mnist", directory):
        for name in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        f"MNIST file {stem}[.gz] not found in {directory / 'mnist'} or {directory}; "
        f"put the four MNIST IDX files there, or pass data_dir= / set {DATA_DIR_ENV} "
        f"to the folder that holds them"
    )


def read_mnist_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, 28, 28]`` uint8 and labels ``[n]`` uint8 from one images/labels file pair.

    Raises:
        DataError: a file is not the expected kind, the images are not 28×28, the two
            counts differ, or a label is outside 0..9.
    """
    images = read_idx(images_path, expected_magic=IMAGES_MAGIC)
    labels = read_idx(labels_path, expected_magic=LABELS_MAGIC)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{images_path} holds images of size {images.shape[1]}x{images.shape[2]}, "
            f"not 28x28; it is not an MNIST images file"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; use the matching pair of files"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{labels_path} contains label {int(labels.max())}, outside 0..9; "
            f"it is not an MNIST labels file"
        )
    return images, labels


def load_mnist(
    data_dir: str | Path | None = None, *, dtype: torch.dtype = torch.float32
) -> Dataset:
    """MNIST as a :class:`Dataset`: inputs ``[n, 784]`` in [0, 1] of ``dtype``, int64 labels.

    Args:
        data_dir: folder holding the IDX files (or a folder with a ``mnist/`` sub-folder);
            default ``$HESSKIT_DATA_DIR``, else ``~/.cache/hesskit/data``.
        dtype: floating-point dtype of the images.

    Raises:
        DataError: a file is missing, truncated, damaged or of the wrong kind.
        InvalidArgumentError: ``dtype`` is not floating point.

    Cost: decompressing and converting the 55 MB of pixels takes about a second.
    """
    directory = resolve_data_dir(data_dir)
    paths = {key: find_mnist_file(directory, stem) for key, stem in MNIST_FILES.items()}
    train_images, train_labels = read_mnist_pair(paths["train_images"], paths["train_labels"])
    test_images, test_labels = read_mnist_pair(paths["test_images"], paths["test_labels"])
    return Dataset(
        name="mnist",
        description=DESCRIPTION,
        train_x=float_tensor(train_images.reshape(len(train_images), -1), dtype, scale=255.0),
        train_y=label_tensor(train_labels),
        test_x=float_tensor(test_images.reshape(len(test_images), -1), dtype, scale=255.0),
        test_y=label_tensor(test_labels),
    )


def mnist_checksums_match(data_dir: str | Path | None = None) -> dict[str, bool]:
    """For each original ``.gz`` file found, whether its MD5 equals the published one."""
    directory = resolve_data_dir(data_dir)
    result = {}
    for stem in MNIST_FILES.values():
        path = find_mnist_file(directory, stem)
        if path.suffix == ".gz":
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            result[path.name] = digest == MNIST_MD5.get(path.name)
    return result
