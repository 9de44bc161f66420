"""Figures of H = G + R: pixel grids, block lines, reason colours, the zoom, the spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.text import Text
from PIL import Image
from torch import nn

from hesskit.dense import hessian
from hesskit.dense.structure import zero_reason_codes
from hesskit.errors import InvalidArgumentError
from hesskit.report.hessian_plots import (
    _save,
    hessian_figures,
    log_abs_heatmap_figure,
    spectra_figure,
)
from hesskit.report.structure_plots import (
    REASON_COLOURS,
    block_zoom_figure,
    max_abs_tiles,
    mode_tiles,
    tiling,
    zero_reason_figure,
)

NAMES = ["a.weight", "a.bias", "b.weight"]
OFFSETS = [0, 12, 15]
N = 20


def texts(figure) -> list[str]:
    return [t.get_text() for t in figure.findobj(Text)]


def line_positions(axes) -> tuple[list[float], list[float]]:
    """y of the horizontal and x of the vertical full-length lines (axhline/axvline)."""
    rows, cols = [], []
    for line in axes.lines:
        x, y = line.get_xdata(), line.get_ydata()
        if x[0] == 0 and x[1] == 1 and y[0] == y[1]:
            rows.append(float(y[0]))
        if y[0] == 0 and y[1] == 1 and x[0] == x[1]:
            cols.append(float(x[0]))
    return sorted(rows), sorted(cols)


def symmetric(n: int, seed: int = 0, zero_rows: tuple[int, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n)) * 10.0 ** rng.uniform(-6, 0, (n, n))
    m = m + m.T
    m[list(zero_rows), :] = 0
    m[:, list(zero_rows)] = 0
    return m


def test_tiling_one_pixel_per_entry_up_to_the_limit_then_tiles():
    assert tiling(910).factor == 1 and tiling(910).pixels(910) >= 910
    assert tiling(10).factor == 1 and tiling(10).pixels(10) == 600  # enlarged ×60
    assert tiling(1200).factor == 1
    big = tiling(2500, 1200)
    assert big.factor == 3 and big.pixels(2500) == 834 <= 1200


def test_max_abs_tiles_against_a_loop_and_zero_only_when_all_zero():
    m = symmetric(7, zero_rows=(0, 1, 2))
    m[4, 5] = m[5, 4] = 0.0
    got = max_abs_tiles(m, 3)
    want = np.array(
        [[np.abs(m[i : i + 3, j : j + 3]).max() for j in range(0, 7, 3)] for i in range(0, 7, 3)]
    )
    np.testing.assert_array_equal(got, want)
    assert got.shape == (3, 3)
    assert (got[0] == 0).all() and (got[1:, 1:] > 0).all()  # rows 0-2 zero, the rest not


def test_mode_tiles_most_frequent_but_unexplained_wins():
    classes = np.array([[0, 0, 1, 1], [0, 2, 1, 1], [3, 3, 3, 3], [3, 3, 3, 3]])
    np.testing.assert_array_equal(mode_tiles(classes, 2, 4, None), [[0, 1], [3, 3]])
    np.testing.assert_array_equal(mode_tiles(classes, 2, 4, 2), [[2, 1], [3, 3]])


def test_heatmap_block_lines_ticks_and_one_pixel_per_entry():
    m = symmetric(N, zero_rows=(3,))
    figure = log_abs_heatmap_figure(m, NAMES, OFFSETS, "M")
    axes = figure.axes[0]
    rows, cols = line_positions(axes)
    assert rows == cols == [11.5, 14.5]
    assert [t.get_text() for t in axes.get_xticklabels()] == NAMES
    np.testing.assert_allclose(axes.get_xticks(), [5.5, 13.0, 17.0])
    width_px = axes.get_window_extent().width
    assert width_px >= N and width_px % N == 0  # an integer number of pixels per entry
    image = axes.images[0].get_array()
    assert image.shape == (N, N)
    assert image.mask[3].all() and image.mask[4].sum() == 1  # exact zeros masked (white)
    np.testing.assert_allclose(image[5, 6], np.log10(abs(m[5, 6])))
    assert not any("each pixel" in t for t in texts(figure))


@pytest.mark.parametrize(("max_pixels", "note"), [(N, False), (N - 1, True)])
def test_aggregation_note_exactly_when_entries_exceed_pixels(max_pixels, note):
    m = symmetric(N)
    heat = log_abs_heatmap_figure(m, NAMES, OFFSETS, "M", max_pixels=max_pixels)
    codes = np.where(m == 0, 0, -1)
    reasons = zero_reason_figure(
        m, codes, ["dead_unit"], NAMES, OFFSETS, "M", max_pixels=max_pixels
    )
    for figure, what in ((heat, "max |entry|"), (reasons, "the most frequent class")):
        shown = [t for t in texts(figure) if t.startswith("each pixel")]
        if note:
            assert shown and what in shown[0] and "over 2×2 entries" in shown[0]
            assert figure.axes[0].images[0].get_array().shape[:2] == (N // 2, N // 2)
        else:
            assert shown == []
            assert figure.axes[0].images[0].get_array().shape[:2] == (N, N)
        # the lines stay at the parameter offsets in entry coordinates when aggregated
        assert line_positions(figure.axes[0]) == ([11.5, 14.5], [11.5, 14.5])


def synthetic_codes():
    """A matrix with rows/cols 0-1 dead, entry (5, 6) unexplained, block (12:15, 15:) linear."""
    labels = ["dead_unit", "linear_in_layer", "unexplained"]
    m = symmetric(N, zero_rows=(0, 1))
    m[12:15, 15:] = 0
    m[15:, 12:15] = 0
    m[5, 6] = m[6, 5] = 0
    codes = np.full((N, N), -1, dtype=np.int8)
    codes[12:15, 15:] = codes[15:, 12:15] = 1
    codes[[0, 1], :] = codes[:, [0, 1]] = 0
    codes[5, 6] = codes[6, 5] = 2
    return m, codes, labels


def test_reasons_map_colours_each_zero_by_its_reason_and_nonzeros_grey():
    m, codes, labels = synthetic_codes()
    figure = zero_reason_figure(m, codes, labels, NAMES, OFFSETS, "M")
    image = figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(image[0, 7], to_rgb(REASON_COLOURS["dead_unit"]))
    np.testing.assert_allclose(image[13, 17], to_rgb(REASON_COLOURS["linear_in_layer"]))
    np.testing.assert_allclose(image[5, 6], (1.0, 0.0, 0.0))  # unexplained: pure red
    nonzero = image[codes == -1]
    assert np.allclose(nonzero[:, 0], nonzero[:, 1]) and np.allclose(nonzero[:, 1], nonzero[:, 2])
    order = np.argsort(np.abs(m[codes == -1]))
    assert np.all(np.diff(nonzero[order, 0]) <= 1e-12)  # larger |value| is darker
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["dead_unit: 76", "linear_in_layer: 30", "unexplained: 2"]


def test_reasons_map_aggregated_never_hides_an_unexplained_zero():
    m, codes, labels = synthetic_codes()
    figure = zero_reason_figure(m, codes, labels, NAMES, OFFSETS, "M", max_pixels=10)
    image = figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(image[2, 3], (1.0, 0.0, 0.0))  # tile (4:6, 6:8): 1 of 4 red
    np.testing.assert_allclose(image[0, 4], to_rgb(REASON_COLOURS["dead_unit"]))


def test_reasons_map_refuses_codes_that_do_not_match_the_zeros():
    m, codes, labels = synthetic_codes()
    codes[5, 6] = -1
    with pytest.raises(InvalidArgumentError, match="non-zero"):
        zero_reason_figure(m, codes, labels, NAMES, OFFSETS, "M")


def test_written_png_keeps_the_reason_colours(tmp_path):
    m, codes, labels = synthetic_codes()
    figure = zero_reason_figure(m, codes, labels, NAMES, OFFSETS, "M")
    axes = figure.axes[0]
    path = _save(figure, tmp_path / "reasons.png")
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(float) / 255
    height = pixels.shape[0]

    def at(row, col):
        x, y = axes.transData.transform((col, row))
        return pixels[int(height - y), int(x)]

    assert pixels.shape[:2] == (
        round(figure.get_figheight() * 100),
        round(figure.get_figwidth() * 100),
    )
    np.testing.assert_allclose(at(0, 7), to_rgb(REASON_COLOURS["dead_unit"]), atol=6 / 255)
    np.testing.assert_allclose(at(13, 17), to_rgb(REASON_COLOURS["linear_in_layer"]), atol=6 / 255)
    np.testing.assert_allclose(at(5, 6), (1.0, 0.0, 0.0), atol=6 / 255)


def test_zoom_has_the_block_shape_and_the_parameters_axes():
    m, codes, labels = synthetic_codes()
    block = m[0:12, 15:20]
    figure = block_zoom_figure(
        block,
        ("a.weight", (4, 3)),
        ("b.weight", (5,)),
        "zoom",
        codes=codes[0:12, 15:20],
        labels=labels,
    )
    log_panel, reasons_panel = figure.axes[:2]
    assert log_panel.images[0].get_array().shape == (12, 5)
    assert reasons_panel.images[0].get_array().shape == (12, 5, 3)
    assert "a.weight (4×3, out×in flattened)" in log_panel.get_ylabel()
    assert "b.weight (5)" in log_panel.get_xlabel()
    # long minor ticks where each of the 4 units of 3 inputs starts; labels at their centres
    np.testing.assert_array_equal(log_panel.get_yticks(minor=True), [-0.5, 2.5, 5.5, 8.5, 11.5])
    np.testing.assert_array_equal(log_panel.get_yticks(), [1, 4, 7, 10])
    assert [t.get_text() for t in log_panel.get_yticklabels()] == ["0", "1", "2", "3"]
    assert line_positions(log_panel) == ([], [])  # nothing drawn over the entries


def test_eigenvalues_three_panels_each_with_its_negatives():
    rng = np.random.default_rng(0)
    spectra = {"H": rng.normal(size=30), "G": np.abs(rng.normal(size=30)), "R": rng.normal(size=30)}
    negatives = {k: int((v < 0).sum()) for k, v in spectra.items()}
    figure = spectra_figure(spectra, negatives, linear_below=1e-3)
    panels = figure.axes
    assert len(panels) == 3
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[2])
    for axes, name in zip(panels, "HGR", strict=True):
        assert axes.get_yscale() == "symlog"
        assert f"{negatives[name]} negative" in axes.get_title()
        _, kept, negative = axes.lines[:3]
        np.testing.assert_array_equal(
            negative.get_ydata(), np.sort(spectra[name])[: negatives[name]]
        )
        assert len(kept.get_ydata()) == 30 - negatives[name]
    assert negatives["G"] == 0 and negatives["H"] > 0


def small_result():
    """A 4-3-2 ReLU net with a dead unit and an all-zero input feature: zeros with reasons."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].bias[1] = -100.0  # unit 1 never active
    inputs = torch.randn(16, 4, dtype=torch.float64)
    inputs[:, 2] = 0.0
    return hessian(model, nn.MSELoss(), (inputs, torch.randn(16, 2, dtype=torch.float64)))


def test_hessian_figures_end_to_end(tmp_path):
    result = small_result()
    codes = {part: zero_reason_codes(result, part) for part in "HGR"}
    written = hessian_figures(result, codes, tmp_path / "figs", zoom=("0.weight", "2.weight"))
    names = [path.name for path, _ in written]
    assert names == [
        "hessian.png",
        "gauss_newton.png",
        "residual.png",
        "hessian_zeros.png",
        "gauss_newton_zeros.png",
        "residual_zeros.png",
        "zoom.png",
        "eigenvalues.png",
    ]
    for path, caption in written:
        with Image.open(path) as image:
            image.verify()
        assert Image.open(path).size[0] > 300
        assert caption.endswith(".") and len(caption) > 40
    dead = int((codes["H"][0] == codes["H"][1].index("dead_unit")).sum())
    assert dead > 0 and f"({(result.hessian == 0).sum().item():,})" in written[3][1]
    with pytest.raises(InvalidArgumentError, match="no parameter"):
        hessian_figures(result, {}, tmp_path / "x", zoom=("0.weight", "nope"))


def test_every_zero_reason_has_its_own_fixed_colour_and_only_unexplained_is_red():
    from hesskit.dense.structure import ZeroReason

    colours = [REASON_COLOURS[reason.value] for reason in ZeroReason]  # KeyError: a new reason
    assert len(set(colours)) == len(colours)
    assert [c for c in colours if to_rgb(c) == (1.0, 0.0, 0.0)] == [REASON_COLOURS["unexplained"]]


def test_zoom_aggregates_each_axis_on_its_own_and_says_so():
    m = symmetric(30)
    figure = block_zoom_figure(m[:, :5], ("w", (30,)), ("v", (5,)), "zoom", max_pixels=10)
    assert figure.axes[0].images[0].get_array().shape == (10, 5)
    np.testing.assert_array_equal(
        figure.axes[0].images[0].get_array()[0], np.log10(np.abs(m[:3, :5]).max(axis=0))
    )
    assert "each pixel = max |entry| / the most frequent class over 3×1 entries" in texts(figure)
