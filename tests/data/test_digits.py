"""The bundled 8×8 digits, and the ``load_dataset`` entry point's name handling."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_load_digits

from hesskit.data import DATASET_NAMES, load_dataset, load_digits
from hesskit.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def raw():
    bunch = sklearn_load_digits()
    return bunch.data, bunch.target


def test_split_sizes_range_and_types():
    data = load_digits()
    assert (data.num_train, data.num_test, data.num_features) == (1438, 359, 64)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert float(data.train_x.min()) == 0.0 and float(data.train_x.max()) == 1.0
    assert data.num_classes == 10


def test_cases_are_the_sklearn_rows_divided_by_16_with_their_labels(raw):
    images, labels = raw
    data = load_digits(dtype=torch.float64)
    both_x = torch.cat([data.train_x, data.test_x]).numpy()
    both_y = torch.cat([data.train_y, data.test_y]).numpy()
    # The split is a permutation: sort rows lexicographically (with the label) and compare.
    ours = np.column_stack([both_x * 16.0, both_y])
    theirs = np.column_stack([images, labels])
    ours = ours[np.lexsort(ours.T[::-1])]
    theirs = theirs[np.lexsort(theirs.T[::-1])]
    np.testing.assert_array_equal(ours, theirs)


def test_split_is_deterministic_and_follows_the_documented_permutation(raw):
    images, _ = raw
    order = np.random.default_rng(0).permutation(1797)
    data = load_digits(dtype=torch.float64)
    np.testing.assert_array_equal(data.test_x.numpy(), images[order[:359]] / 16.0)
    np.testing.assert_array_equal(data.train_x.numpy(), images[order[359:]] / 16.0)
    assert torch.equal(load_digits().train_x, load_digits().train_x)


def test_another_seed_gives_another_split():
    assert not torch.equal(load_digits(seed=0).test_y, load_digits(seed=1).test_y)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_bad_test_fraction(fraction):
    with pytest.raises(InvalidArgumentError, match="test_fraction must be strictly between"):
        load_digits(test_fraction=fraction)


def test_load_dataset_digits_is_load_digits():
    assert torch.equal(load_dataset("digits").train_x, load_digits().train_x)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        InvalidArgumentError, match=r"unknown data set 'cifar'; choose one of digits, mnist"
    ):
        load_dataset("cifar")
    assert DATASET_NAMES == ("digits", "mnist", "curves", "curves-synthetic", "mnist1d")
