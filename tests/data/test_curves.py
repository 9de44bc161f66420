"""CURVES: the synthetic substitute against a brute-force rasteriser, and the real-file reader."""

import functools

import numpy as np
import pytest
import scipy.io
import torch

import hesskit.data
from hesskit.data import load_dataset
from hesskit.data.cache import cache_dir
from hesskit.data.curves import (
    curve_points,
    generate_synthetic_curves,
    load_curves,
    load_synthetic_curves,
    rasterise,
)
from hesskit.errors import DataError, InvalidArgumentError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HESSKIT_DATA_DIR", raising=False)


def brute_force_image(points, reach=1.5):
    """Every pixel centre against every point: clip(reach − min distance, 0, 1), row-major."""
    rows, cols = np.mgrid[0:28, 0:28]
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)  # (x, y)
    distance = np.linalg.norm(centres[:, None, :] - points[None, :, :], axis=-1).min(axis=1)
    return np.clip(reach - distance, 0.0, 1.0)


def test_rasteriser_equals_brute_force_distance_rendering():
    rng = np.random.default_rng(3)
    # Control points reaching past the edges exercise the border handling too.
    points = curve_points(rng.uniform(-4.0, 31.0, size=(12, 3, 2)))
    images = rasterise(points)
    for image, pts in zip(images, points, strict=True):
        np.testing.assert_allclose(image, brute_force_image(pts), rtol=0, atol=2e-6)


def test_curve_passes_through_its_end_points_and_the_bezier_midpoint():
    control = np.array([[[3.0, 4.0], [20.0, 22.0], [10.0, 5.0]]])
    points = curve_points(control, samples=5)
    np.testing.assert_allclose(points[0, 0], [3.0, 4.0])
    np.testing.assert_allclose(points[0, -1], [10.0, 5.0])
    # B(1/2) = P0/4 + P1/2 + P2/4.
    np.testing.assert_allclose(points[0, 2], [0.75 + 10.0 + 2.5, 1.0 + 11.0 + 1.25])


def test_sample_spacing_is_below_half_a_pixel():
    points = curve_points(np.random.default_rng(0).uniform(3.5, 23.5, size=(500, 3, 2)))
    assert np.linalg.norm(np.diff(points, axis=1), axis=-1).max() < 0.45


def test_synthetic_images_are_deterministic_bounded_and_non_empty():
    a = generate_synthetic_curves(300, seed=5)
    assert a.shape == (300, 784) and a.dtype == np.float32
    assert a.min() == 0.0 and a.max() == 1.0
    assert (a.max(axis=1) == 1.0).all()  # every image has a full-intensity stroke
    assert ((a > 0) & (a < 1)).any(axis=1).all()  # and anti-aliased edges
    np.testing.assert_array_equal(a, generate_synthetic_curves(300, seed=5))
    assert not np.array_equal(a, generate_synthetic_curves(300, seed=6))


def test_synthetic_dataset_says_it_is_a_substitute_and_is_cached():
    data = load_synthetic_curves(num_train=200, num_test=100, seed=1)
    assert (data.num_train, data.num_test, data.num_features) == (200, 100, 784)
    assert data.train_y is None and data.test_y is None
    assert "SYNTHETIC SUBSTITUTE" in data.description
    assert "not comparable with published CURVES numbers" in data.description
    assert (cache_dir() / "curves-synthetic-v1-s1-200-100.npz").is_file()
    again = load_synthetic_curves(num_train=200, num_test=100, seed=1, dtype=torch.float64)
    assert again.train_x.dtype == torch.float64
    assert torch.equal(again.train_x.float(), data.train_x)


def test_test_set_does_not_depend_on_the_training_set_size():
    small = load_synthetic_curves(num_train=10, num_test=50, use_cache=False)
    large = load_synthetic_curves(num_train=60, num_test=50, use_cache=False)
    assert torch.equal(small.test_x, large.test_x)
    assert torch.equal(small.train_x, large.train_x[:10])


def test_bad_sizes_are_rejected():
    with pytest.raises(InvalidArgumentError, match="num_train must be at least 1"):
        load_synthetic_curves(num_train=0)


def test_curves_name_falls_back_to_the_substitute_with_a_note(tmp_path, monkeypatch):
    small = functools.partial(load_synthetic_curves, num_train=20, num_test=10)
    monkeypatch.setattr(hesskit.data, "load_synthetic_curves", small)
    data = load_dataset("curves", data_dir=tmp_path)
    assert data.description.startswith("Note: the original digs3pts_1.mat was not found")
    assert "SYNTHETIC SUBSTITUTE" in data.description
    assert data.num_train == 20


# The real-file reader, on small files the tests write ---------------------------------


def _write_mat(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, arrays)


def test_real_file_is_used_when_present(tmp_path):
    rng = np.random.default_rng(0)
    bdata, bdatatest = rng.uniform(size=(30, 784)), rng.uniform(size=(12, 784))
    _write_mat(tmp_path / "curves" / "digs3pts_1.mat", bdata=bdata, bdatatest=bdatatest)
    data = load_dataset("curves", data_dir=tmp_path, dtype=torch.float64)
    assert data.name == "curves" and "original digs3pts_1.mat" in data.description
    np.testing.assert_array_equal(data.train_x.numpy(), bdata)
    np.testing.assert_array_equal(data.test_x.numpy(), bdatatest)


def test_missing_real_file(tmp_path):
    with pytest.raises(DataError, match=r"digs3pts_1\.mat not found in .*curves-synthetic"):
        load_curves(tmp_path)


@pytest.mark.parametrize(
    ("arrays", "pattern"),
    [
        ({"bdata": np.zeros((3, 784))}, r"has no variable 'bdatatest'"),
        (
            {"bdata": np.zeros((3, 100)), "bdatatest": np.zeros((2, 784))},
            r"'bdata' has shape \(3, 100\)",
        ),
        (
            {"bdata": np.full((3, 784), 2.0), "bdatatest": np.zeros((2, 784))},
            r"values outside \[0, 1\]",
        ),
    ],
)
def test_wrong_contents(tmp_path, arrays, pattern):
    _write_mat(tmp_path / "digs3pts_1.mat", **arrays)
    with pytest.raises(DataError, match=pattern):
        load_curves(tmp_path)


def test_garbage_file(tmp_path):
    (tmp_path / "digs3pts_1.mat").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DataError, match=r"digs3pts_1\.mat is not a readable MATLAB \.mat file"):
        load_curves(tmp_path)
