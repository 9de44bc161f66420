"""Pictures of the structure of a dense N×N matrix: pixel grids, blocks, and why entries are zero.

Pure drawing from arrays already computed (never a derivative); matplotlib's Agg backend.

* :func:`tiling` decides how many pixels an entry gets. Up to ``max_pixels`` entries a side,
  every entry gets one screen pixel or more (an integer ``scale``, nearest-neighbour, no
  smoothing). Beyond that, ``factor × factor`` tiles of entries share one pixel and the figure
  says so: the log|M| heatmap shows the largest |entry| of a tile (a tile is drawn as "exactly
  zero" only when all its entries are), the reasons map the most frequent class of a tile
  (any ``unexplained`` zero wins, so none is ever hidden).
* :func:`zero_reason_figure` colours every exactly-zero entry by its reason (codes from
  ``hesskit.dense.structure.zero_reason_codes``: ``-1`` for a non-zero entry, else an index into
  ``labels``) and every non-zero entry in grey by log₁₀|value|.
* :func:`image_axes` places an image at an exact pixel size, with fixed margins in inches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from hesskit.errors import InvalidArgumentError

DPI = 100
PAGE_WIDTH_PX = 1150
"""The width a page shows figures at (``report.pages.CSS``: the body's content width)."""
MAX_PIXELS = 1200
"""Largest image side, in pixels, before entries are aggregated into tiles."""
TARGET_PIXELS = 600
"""Small matrices are enlarged by an integer factor up to about this many pixels a side."""

UNEXPLAINED = "unexplained"
REASON_COLOURS = {
    "non_interacting_outputs": "#0072B2",  # Okabe & Ito's colour-blind-safe palette
    "linear_in_layer": "#56B4E9",
    "separate_hidden_units": "#009E73",
    "separate_units_in_layer": "#999933",  # Paul Tol's colour-blind-safe "muted" olive
    "dead_unit": "#E69F00",
    "zero_input_feature": "#F0E442",
    "disjoint_support": "#CC79A7",
    UNEXPLAINED: "#FF0000",  # loud on purpose
}
"""A fixed colour per known zero reason: Okabe & Ito, "Color Universal Design" (2008),
without its vermillion so that pure red means only ``unexplained``."""
SPARE_COLOURS = ("#8C510A", "#01665E", "#762A83", "#1B7837", "#B35806")
"""For reasons this module does not know yet (dark, far from the greys and from red)."""
ZERO_COLOUR = "white"
"""Exact zeros in a log|M| heatmap (viridis has no white)."""
GREYS = LinearSegmentedColormap.from_list("nonzero", ["#D0D0D0", "#000000"])
"""Non-zero entries: light grey (smallest |value|) to black (largest)."""


@dataclass(frozen=True)
class Tiling:
    """How entries map to pixels: ``factor × factor`` entries per tile, ``scale`` pixels per tile.

    Exactly one of the two is above 1 unless both are 1 (one pixel per entry).
    """

    factor: int
    scale: int

    @property
    def aggregated(self) -> bool:
        return self.factor > 1

    def pixels(self, entries: int) -> int:
        """Screen pixels for ``entries`` rows (or columns)."""
        return math.ceil(entries / self.factor) * self.scale


def tiling(
    entries: int, max_pixels: int = MAX_PIXELS, target_pixels: int = TARGET_PIXELS
) -> Tiling:
    """The tiling for a side of ``entries``: aggregate only when it exceeds ``max_pixels``."""
    if entries < 1 or max_pixels < 1:
        raise InvalidArgumentError(f"cannot draw {entries} entries in {max_pixels} pixels")
    if entries > max_pixels:
        return Tiling(math.ceil(entries / max_pixels), 1)
    return Tiling(1, max(1, target_pixels // entries))


Factor = int | tuple[int, int]
"""Entries per tile: the same along rows and columns, or ``(along rows, along columns)``."""


def _pair(factor: Factor) -> tuple[int, int]:
    return (factor, factor) if isinstance(factor, int) else factor


def _tiles(array: np.ndarray, factor: Factor, fill) -> np.ndarray:
    """``[R, C]`` → ``[ceil(R/f), f, ceil(C/g), g]`` for ``(f, g)``, padded with ``fill``."""
    (rows, cols), (f, g) = array.shape, _pair(factor)
    padded = np.full((math.ceil(rows / f) * f, math.ceil(cols / g) * g), fill, dtype=array.dtype)
    padded[:rows, :cols] = array
    return padded.reshape(padded.shape[0] // f, f, padded.shape[1] // g, g)


def max_abs_tiles(matrix: np.ndarray, factor: Factor) -> np.ndarray:
    """max |entry| over each ``factor × factor`` tile (0 only if every entry of it is 0)."""
    magnitude = np.abs(np.asarray(matrix, dtype=float))
    if _pair(factor) == (1, 1):
        return magnitude
    return _tiles(magnitude, factor, 0.0).max(axis=(1, 3))


def mode_tiles(
    classes: np.ndarray, factor: Factor, num_classes: int, wins: int | None
) -> np.ndarray:
    """The most frequent class in each tile (ties: the lowest), class ``wins`` if present at all.

    ``classes`` holds integers in ``[0, num_classes)``; padding is not counted.
    """
    if _pair(factor) == (1, 1):
        return classes
    tiles = _tiles(classes.astype(np.int16), factor, -1)
    counts = np.stack([(tiles == c).sum(axis=(1, 3)) for c in range(num_classes)])
    chosen = counts.argmax(axis=0)
    if wins is not None:
        chosen = np.where(counts[wins] > 0, wins, chosen)
    return chosen


def log_magnitude(magnitude: np.ndarray) -> np.ndarray:
    """log₁₀ of non-negative values, masked where exactly 0 (drawn in the 'bad' colour)."""
    if not np.isfinite(magnitude).all():
        raise InvalidArgumentError("the matrix has NaN or infinite entries; nothing to draw")
    with np.errstate(divide="ignore"):
        return np.ma.masked_equal(np.log10(magnitude), -np.inf)


def log_range(matrices: Sequence[np.ndarray], decades: float = 16.0) -> tuple[float, float]:
    """A common (vmin, vmax) of log₁₀|entry| over non-zero entries, at most ``decades`` wide."""
    tops, bottoms = [], []
    for matrix in matrices:
        magnitude = np.abs(np.asarray(matrix, dtype=float))
        nonzero = magnitude[magnitude > 0]
        if nonzero.size:
            tops.append(np.log10(nonzero.max()))
            bottoms.append(np.log10(nonzero.min()))
    if not tops:
        return -1.0, 0.0
    top = max(tops)
    bottom = max(min(bottoms), top - decades)
    return (bottom - 1.0, top) if bottom == top else (bottom, top)


def image_axes(
    rows_px: int,
    cols_px: int,
    *,
    left: float = 1.0,
    right: float = 1.3,
    bottom: float = 0.9,
    top: float = 0.8,
    panels: int = 1,
    gap: float = 1.4,
    dpi: int = DPI,
) -> tuple[Figure, list[Axes]]:
    """A figure with ``panels`` image axes of exactly ``rows_px × cols_px`` pixels each.

    Margins are in inches; ``gap`` separates panels (room for a colourbar or tick labels).
    """
    width_in, height_in = cols_px / dpi, rows_px / dpi
    fig_w = left + panels * width_in + (panels - 1) * gap + right
    fig_h = bottom + height_in + top
    figure = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    axes = [
        figure.add_axes(
            (
                (left + i * (width_in + gap)) / fig_w,
                bottom / fig_h,
                width_in / fig_w,
                height_in / fig_h,
            )
        )
        for i in range(panels)
    ]
    return figure, axes


def colourbar_axes(
    figure: Figure, axes: Axes, width: float = 0.15, pad: float = 0.1, height: float = 1.0
) -> Axes:
    """A thin axes right of ``axes`` (``width``, ``pad`` in inches; ``height`` a fraction of its
    height, from the bottom)."""
    fig_w, _ = figure.get_size_inches()
    box = axes.get_position()
    return figure.add_axes((box.x1 + pad / fig_w, box.y0, width / fig_w, box.height * height))


def show(axes: Axes, image: np.ndarray, rows: int, cols: int, factor: Factor, **kwargs):
    """``imshow`` in entry coordinates: pixel (i, j) of ``image`` covers one tile of entries."""
    (height, width), (f, g) = image.shape[:2], _pair(factor)
    shown = axes.imshow(
        image,
        interpolation="nearest",
        extent=(-0.5, width * g - 0.5, height * f - 0.5, -0.5),
        aspect="auto",  # the axes already have the image's pixel size
        **kwargs,
    )
    axes.set_xlim(-0.5, cols - 0.5)
    axes.set_ylim(rows - 0.5, -0.5)
    return shown


def draw_blocks(axes: Axes, names: Sequence[str], offsets: Sequence[int], n: int) -> None:
    """Lines between parameter blocks at ``offsets`` (entry ``o`` starts at ``o - 0.5``) and
    each parameter's name at the centre of its block on both axes.

    The lines are white on black (visible on white zeros, greys and every reason colour).
    """
    edges = [*offsets, n]
    outline = [patheffects.Stroke(linewidth=2.2, foreground="black"), patheffects.Normal()]
    for edge in edges[1:-1]:
        for line in (axes.axhline, axes.axvline):
            line(edge - 0.5, color="white", linewidth=0.8, path_effects=outline)
    centres = [(a + b - 1) / 2 for a, b in pairwise(edges)]
    axes.set_xticks(centres, list(names), rotation=90, fontsize=8)
    axes.set_yticks(centres, list(names), fontsize=8)
    axes.tick_params(length=0)


def aggregation_note(factor: Factor, what: str) -> str:
    """The sentence a figure carries when a tile of entries shares a pixel."""
    f, g = _pair(factor)
    return f"each pixel = {what} over {f}×{g} entries"


def reason_colours(labels: Sequence[str]) -> list[str]:
    """The colour of each label: fixed for known reasons, a spare one for others."""
    spare = iter(SPARE_COLOURS * (1 + len(labels) // len(SPARE_COLOURS)))
    return [REASON_COLOURS.get(label) or next(spare) for label in labels]


def reason_handles(codes: np.ndarray, labels: Sequence[str]) -> list[Patch]:
    """Legend entries ``"reason: count"`` for the reasons that occur, and always unexplained."""
    codes = np.asarray(codes)
    handles = []
    for index, (label, colour) in enumerate(zip(labels, reason_colours(labels), strict=True)):
        count = int((codes == index).sum())
        if count or label == UNEXPLAINED:
            handles.append(
                Patch(
                    facecolor=colour, edgecolor="black", linewidth=0.3, label=f"{label}: {count:,}"
                )
            )
    return handles


def reason_image(
    matrix: np.ndarray,
    codes: np.ndarray,
    labels: Sequence[str],
    factor: Factor,
    norm: Normalize,
) -> tuple[np.ndarray, np.ndarray]:
    """RGB ``[rows, cols, 3]`` of the reasons map and the tile classes behind it.

    Class ``c < len(labels)`` is a zero with reason ``labels[c]``; class ``len(labels)`` is a
    non-zero entry, drawn in :data:`GREYS` by log₁₀ of its tile's largest |entry|.
    """
    matrix = np.asarray(matrix, dtype=float)
    codes = np.asarray(codes)
    if codes.shape != matrix.shape:
        raise InvalidArgumentError(f"codes {codes.shape} do not match the matrix {matrix.shape}")
    nonzero_class = len(labels)
    if codes.size and (codes.max() >= nonzero_class or codes.min() < -1):
        raise InvalidArgumentError(f"codes must be -1 or an index into the {len(labels)} labels")
    if ((codes == -1) != (matrix != 0)).any():
        raise InvalidArgumentError("codes must be -1 exactly where the matrix is non-zero")
    classes = np.where(codes < 0, nonzero_class, codes)
    loud = list(labels).index(UNEXPLAINED) if UNEXPLAINED in labels else None
    tiles = mode_tiles(classes, factor, nonzero_class + 1, loud)
    magnitude = max_abs_tiles(matrix, factor)
    palette = np.array([to_rgb(c) for c in reason_colours(labels)] + [(0.0, 0.0, 0.0)])
    image = palette[tiles]
    grey = tiles == nonzero_class
    with np.errstate(divide="ignore"):
        levels = norm(np.log10(np.where(magnitude[grey] > 0, magnitude[grey], np.nan)))
    image[grey] = GREYS(np.nan_to_num(np.clip(levels, 0, 1), nan=0.0))[:, :3]
    return image, tiles


def draw_log_abs(
    axes: Axes, matrix: np.ndarray, factor: Factor, limits: tuple[float, float]
) -> matplotlib.image.AxesImage:
    """log₁₀ of the tiles' max |entry| in viridis, exact zeros in white (not the colormap's
    bottom), values below ``limits[0]`` clipped to the bottom."""
    rows, cols = matrix.shape
    image = log_magnitude(max_abs_tiles(matrix, factor))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=ZERO_COLOUR)
    return show(axes, image, rows, cols, factor, cmap=cmap, vmin=limits[0], vmax=limits[1])


def zero_reason_figure(
    matrix: np.ndarray,
    codes: np.ndarray,
    labels: Sequence[str],
    names: Sequence[str],
    offsets: Sequence[int],
    title: str,
    *,
    log_limits: tuple[float, float] | None = None,
    max_pixels: int = 2 * MAX_PIXELS,
) -> Figure:
    """Zero entries coloured by reason (legend with counts), non-zero entries grey by log|value|.

    Aggregates only above ``max_pixels`` entries a side (twice the heatmaps' limit, so that
    the demo's matrices are drawn entry by entry), and then says so on the figure.
    """
    n = matrix.shape[0]
    tile = tiling(n, max_pixels)
    vmin, vmax = log_limits or log_range([matrix])
    norm = Normalize(vmin, vmax)
    image, _ = reason_image(matrix, codes, labels, tile.factor, norm)
    side = tile.pixels(n)
    figure, (axes,) = image_axes(side, side, right=3.0)
    show(axes, image, n, n, tile.factor)
    draw_blocks(axes, names, offsets, n)
    legend = axes.legend(
        handles=reason_handles(codes, labels),
        title="exact zeros, by reason",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=8,
        title_fontsize=8,
        frameon=False,
    )
    legend.set_in_layout(False)
    figure.colorbar(
        ScalarMappable(norm, GREYS),
        cax=colourbar_axes(figure, axes, pad=0.2, height=0.45),
        label="non-zero: log10 |entry|",
    )
    axes.set_title(title, fontsize=10, pad=14)
    if tile.aggregated:
        note = aggregation_note(tile.factor, "the most frequent class (any unexplained zero wins)")
        axes.text(0.0, 1.005, note, transform=axes.transAxes, fontsize=8, va="bottom")
    return figure


def parameter_axis(
    axes: Axes, which: str, name: str, shape: Sequence[int], entries: int, pixels: int
) -> None:
    """Label one axis of a block with its parameter's own indices.

    A tensor of shape ``(out, *rest)`` is flattened row-major, so each of its ``out`` units
    (rows of a weight matrix, output channels of a convolution) owns ``prod(rest)`` consecutive
    entries: long minor ticks outside the image mark where each unit starts (nothing is drawn
    over the entries) and labels at the centres name them. A 1-D tensor is indexed directly.
    """
    shape = tuple(int(s) for s in shape) or (1,)
    set_ticks = axes.set_yticks if which == "y" else axes.set_xticks
    set_label = axes.set_ylabel if which == "y" else axes.set_xlabel
    dims = "×".join(str(s) for s in shape)
    if len(shape) == 1:
        set_label(f"{name} ({dims})\nindex", fontsize=9)
        return
    units, per_unit = shape[0], entries // shape[0]
    if pixels >= 3 * units:  # unit boundaries at least 3 pixels apart
        set_ticks([u * per_unit - 0.5 for u in range(units + 1)], minor=True)
    step = max(1, math.ceil(units * 16 / pixels))  # labels at least 16 pixels apart
    chosen = range(0, units, step)
    set_ticks([u * per_unit + (per_unit - 1) / 2 for u in chosen], [str(u) for u in chosen])
    axes.tick_params(axis=which, which="major", labelsize=7, length=0)
    axes.tick_params(axis=which, which="minor", length=7, width=0.8)
    inner = "in" if len(shape) == 2 else "×".join(str(s) for s in shape[1:])
    set_label(f"{name} ({dims}, out×{inner} flattened)\noutput unit", fontsize=9)


def block_zoom_figure(
    block: np.ndarray,
    rows: tuple[str, Sequence[int]],
    columns: tuple[str, Sequence[int]],
    title: str,
    *,
    codes: np.ndarray | None = None,
    labels: Sequence[str] = (),
    log_limits: tuple[float, float] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Figure:
    """One block alone: log₁₀|entry| (left) and, given ``codes``, the reasons map (right).

    ``rows`` and ``columns`` are ``(parameter name, parameter shape)``; each axis is labelled
    by that parameter's units (:func:`parameter_axis`).
    """
    block = np.asarray(block, dtype=float)
    r, c = block.shape
    panels = 1 if codes is None else 2
    left, gap, right = 1.1, 1.6, (2.6 if codes is not None else 1.3)
    # the panels share a page's width (PAGE_WIDTH_PX) with the margins, so that the figure
    # is shown at its own size and its text stays readable
    margins_px = (left + (panels - 1) * gap + right) * DPI
    panel_px = max(100, int((PAGE_WIDTH_PX - margins_px) // panels))
    row_tile, col_tile = (tiling(k, min(max_pixels, panel_px), target_pixels=panel_px)
                          for k in (r, c))
    factor = (row_tile.factor, col_tile.factor)
    figure, panel_axes = image_axes(
        row_tile.pixels(r),
        col_tile.pixels(c),
        panels=panels,
        left=left,
        bottom=1.0,
        gap=gap,
        right=right,
    )
    limits = log_limits or log_range([block])
    shown = draw_log_abs(panel_axes[0], block, factor, limits)
    figure.colorbar(
        shown, cax=colourbar_axes(figure, panel_axes[0]), label="log10 |entry| (white: exactly 0)"
    )
    panel_axes[0].set_title("log10 |entry|", fontsize=9)
    if codes is not None:
        image, _ = reason_image(block, codes, labels, factor, Normalize(*limits))
        show(panel_axes[1], image, r, c, factor)
        panel_axes[1].legend(
            handles=[
                *reason_handles(codes, labels),
                Patch(facecolor="#606060", label="non-zero (grey: log|entry|)"),
            ],
            title="why zero",
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=8,
            title_fontsize=8,
            frameon=False,
        )
        panel_axes[1].set_title("why each entry is zero", fontsize=9)
    for axes in panel_axes:
        parameter_axis(axes, "y", rows[0], rows[1], r, row_tile.pixels(r))
        parameter_axis(axes, "x", columns[0], columns[1], c, col_tile.pixels(c))
    figure.suptitle(title, fontsize=10, y=1 - 0.25 / figure.get_size_inches()[1], va="top")
    if row_tile.aggregated or col_tile.aggregated:
        note = aggregation_note(factor, "max |entry| / the most frequent class")
        figure.text(0.5, 1 - 0.5 / figure.get_size_inches()[1], note, ha="center", fontsize=8)
    return figure
