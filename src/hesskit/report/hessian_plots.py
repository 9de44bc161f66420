"""Figures of a dense Hessian H = G + R: log|entry| heatmaps, why entries are zero, spectra.

Pure drawing from arrays already computed (never a derivative); matplotlib's Agg backend.
:func:`hessian_figures` writes every figure of a
:class:`~hesskit.dense.hessian.DenseHessian` and returns ``(png path, caption)`` pairs for a
report page. Pixel grids, aggregation and the reasons map are in
:mod:`hesskit.report.structure_plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from hesskit.errors import InvalidArgumentError
from hesskit.report.structure_plots import (
    DPI,
    MAX_PIXELS,
    UNEXPLAINED,
    Tiling,
    aggregation_note,
    block_zoom_figure,
    colourbar_axes,
    draw_blocks,
    draw_log_abs,
    image_axes,
    log_range,
    tiling,
    zero_reason_figure,
)

if TYPE_CHECKING:
    from torch import Tensor

    from hesskit.dense.hessian import DenseHessian
    from hesskit.dense.spectrum import Spectrum

TITLES = {"H": "Hessian H", "G": "Gauss-Newton G", "R": "residual R = H - G"}
FILES = {"H": "hessian", "G": "gauss_newton", "R": "residual"}
SERIES_COLOURS = {"H": "#0072B2", "G": "#009E73", "R": "#E69F00"}
NEGATIVE_COLOUR = "#D55E00"


def log_abs_heatmap_figure(
    matrix: np.ndarray,
    names: Sequence[str],
    offsets: Sequence[int],
    title: str,
    *,
    log_limits: tuple[float, float] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Figure:
    """log₁₀|M| of a square ``[N, N]`` matrix: parameter blocks outlined and named.

    One pixel per entry or more while N ≤ ``max_pixels``; beyond, each pixel shows the max
    |entry| of a tile of entries and the figure says so. Exact zeros are white.
    """
    matrix = np.asarray(matrix, dtype=float)
    n = matrix.shape[0]
    if matrix.shape != (n, n):
        raise InvalidArgumentError(f"a square matrix is needed, got shape {matrix.shape}")
    tile = tiling(n, max_pixels)
    side = tile.pixels(n)
    figure, (axes,) = image_axes(side, side)
    limits = log_limits or log_range([matrix])
    shown = draw_log_abs(axes, matrix, tile.factor, limits)
    smallest = np.abs(matrix[matrix != 0]).min(initial=np.inf)
    figure.colorbar(
        shown,
        cax=colourbar_axes(figure, axes),
        label="log10 |entry| (white: exactly 0)",
        extend="min" if np.log10(smallest) < limits[0] else "neither",
    )
    draw_blocks(axes, names, offsets, n)
    axes.set_title(title, fontsize=10, pad=14)
    if tile.aggregated:
        note = aggregation_note(tile.factor, "max |entry|")
        axes.text(0.0, 1.005, note, transform=axes.transAxes, fontsize=8, va="bottom")
    return figure


def plot_log_abs_heatmap(
    matrix: np.ndarray,
    names: Sequence[str],
    offsets: Sequence[int],
    title: str,
    path: str | Path,
    **options,
) -> Path:
    """Write :func:`log_abs_heatmap_figure` to ``path`` (PNG)."""
    return _save(log_abs_heatmap_figure(matrix, names, offsets, title, **options), path)


def spectra_figure(
    spectra: Mapping[str, np.ndarray],
    negatives: Mapping[str, int],
    linear_below: float | None = None,
) -> Figure:
    """Sorted eigenvalues of each matrix in its own panel, one shared symmetric-log y-axis.

    The ``negatives[name]`` smallest eigenvalues (the count of negative ones beyond rounding,
    as the caller decided) are drawn in a second colour; ``linear_below`` is where the axis
    turns linear (default 1e-8 · max|λ|), shaded grey.
    """
    names = list(spectra)
    figure = Figure(figsize=(3.6 * len(names) + 0.9, 4.4), dpi=DPI)
    panels = figure.subplots(1, len(names), sharey=True, squeeze=False)[0]
    figure.subplots_adjust(
        left=0.9 / figure.get_figwidth(), right=0.98, bottom=0.12, top=0.9, wspace=0.06
    )
    largest = max((float(np.abs(v).max()) for v in spectra.values() if len(v)), default=1.0)
    threshold = max(linear_below or largest * 1e-8, 1e-300)
    for axes, name in zip(panels, names, strict=True):
        values = np.sort(np.asarray(spectra[name], dtype=float))
        index = np.arange(len(values))
        negative = index < negatives[name]  # ascending: the count's first values
        axes.plot(index, values, "-", color=SERIES_COLOURS.get(name, "black"), linewidth=0.8)
        axes.plot(
            index[~negative],
            values[~negative],
            ".",
            color=SERIES_COLOURS.get(name, "black"),
            markersize=2.5,
            label=f"{int((~negative).sum())} not negative",
        )
        axes.plot(
            index[negative],
            values[negative],
            ".",
            color=NEGATIVE_COLOUR,
            markersize=3.5,
            label=f"{negatives[name]} negative",
        )
        axes.set_yscale("symlog", linthresh=threshold)
        axes.axhspan(-threshold, threshold, color="0.9", zorder=0)
        axes.axhline(0, color="grey", linewidth=0.5)
        axes.set_title(f"{TITLES.get(name, name)}: {negatives[name]} negative", fontsize=10)
        axes.set_xlabel("index (ascending)")
        axes.legend(fontsize=8, loc="upper left")
        axes.grid(True, which="major", linewidth=0.3)
    panels[0].set_ylabel(f"eigenvalue (symlog, linear within ±{threshold:.1e})")
    _spaced_symlog_ticks(panels[0], threshold)
    return figure


def _spaced_symlog_ticks(axes, threshold: float) -> None:
    """Keep 0 and the ticks at least two decades outside the linear band ±``threshold``:
    the ticks at ±threshold print on top of 0's label (the band is one decade tall)."""
    low, high = axes.get_ylim()
    ticks = [t for t in axes.get_yticks() if low <= t <= high]
    kept = [t for t in ticks if t == 0 or abs(t) >= 100 * threshold]
    axes.set_yticks(kept)
    axes.set_ylim(low, high)


def plot_spectra(
    spectra: Mapping[str, np.ndarray],
    negatives: Mapping[str, int],
    path: str | Path,
    linear_below: float | None = None,
) -> Path:
    """Write :func:`spectra_figure` to ``path`` (PNG)."""
    return _save(spectra_figure(spectra, negatives, linear_below), path)


def hessian_figures(
    result: DenseHessian,
    zero_codes: Mapping[str, tuple[Tensor, Sequence[str]]],
    folder: str | Path,
    zoom: tuple[str, str] | None = None,
    spectra: Mapping[str, Spectrum] | None = None,
) -> list[tuple[Path, str]]:
    """Write every figure of H (and G, R when computed) into ``folder``; ``(png, caption)`` pairs.

    Args:
        result: the dense H = G + R.
        zero_codes: ``{part: (codes, labels)}`` as from
            ``hesskit.dense.structure.zero_reason_codes(result, part)``: codes ``[N, N]``,
            -1 where the entry is non-zero, else an index into ``labels``. One reasons map per
            part given; the zoom shows H's reasons when ``"H"`` is given.
        folder: where the PNGs go (created if missing).
        zoom: ``(row parameter, column parameter)`` of the block to show alone (default: the
            diagonal block of the largest parameter).
        spectra: eigenvalues already computed, ``{part: Spectrum}`` (default: computed here,
            O(N³) each).

    Files: ``hessian.png``, ``gauss_newton.png``, ``residual.png`` (log|M|),
    ``<file>_zeros.png`` (reasons), ``zoom.png`` and ``eigenvalues.png``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layout = result.layout
    names, offsets = list(layout.names), list(layout.offsets)
    matrices = {p: result.matrix(p).detach().cpu().double().numpy() for p in _parts(result)}
    limits = log_range(list(matrices.values()))
    n = layout.num_params
    written = []
    for part, matrix in matrices.items():
        path = folder / f"{FILES[part]}.png"
        tile = tiling(n)
        _save(
            log_abs_heatmap_figure(
                matrix, names, offsets, f"log10 |{TITLES[part]}|", log_limits=limits
            ),
            path,
        )
        written.append((path, _heatmap_caption(part, n, tile.factor, int((matrix == 0).sum()))))
    for part, (codes, labels) in zero_codes.items():
        codes_array = _codes(codes)
        path = folder / f"{FILES[part]}_zeros.png"
        figure = zero_reason_figure(
            matrices[part],
            codes_array,
            labels,
            names,
            offsets,
            f"why each entry of {part} is exactly zero",
            log_limits=limits,
        )
        _save(figure, path)
        caption = _reasons_caption(part, codes_array, list(labels), tiling(n, 2 * MAX_PIXELS))
        written.append((path, caption))
    written.append(_zoom(result, matrices["H"], zero_codes.get("H"), zoom, limits, folder))
    chosen = spectra or {p: result.spectrum(p) for p in matrices}
    path = folder / "eigenvalues.png"
    _save(
        spectra_figure(
            {p: s.values.cpu().numpy() for p, s in chosen.items()},
            {p: s.num_negative for p, s in chosen.items()},
            linear_below=max(s.tolerance for s in chosen.values()) or None,
        ),
        path,
    )
    counts = ", ".join(f"{p} {s.num_negative}" for p, s in chosen.items())
    written.append(
        (
            path,
            f"Sorted eigenvalues of {', '.join(chosen)}, one panel each on a shared symmetric-log "
            f"axis (linear in the grey band, the rounding tolerance); negative eigenvalues in "
            f"red-orange: {counts}.",
        )
    )
    return written


def _zoom(result, h, codes_and_labels, zoom, limits, folder) -> tuple[Path, str]:
    layout = result.layout
    if zoom is None:
        largest = max(range(len(layout.names)), key=lambda i: layout.sizes[i])
        zoom = (layout.names[largest], layout.names[largest])
    for name in zoom:
        if name not in layout.names:
            raise InvalidArgumentError(
                f"no parameter {name!r} to zoom on; choose from {', '.join(layout.names)}"
            )
    rows, cols = layout.slice(zoom[0]), layout.slice(zoom[1])
    shapes = dict(zip(layout.names, layout.shapes, strict=True))
    codes, labels = (None, ()) if codes_and_labels is None else codes_and_labels
    block_codes = None if codes is None else _codes(codes)[rows, cols]
    figure = block_zoom_figure(
        h[rows, cols],
        (zoom[0], shapes[zoom[0]]),
        (zoom[1], shapes[zoom[1]]),
        f"block of H: rows {zoom[0]}, columns {zoom[1]}",
        codes=block_codes,
        labels=labels,
        log_limits=limits,
    )
    path = folder / "zoom.png"
    _save(figure, path)
    size = f"{rows.stop - rows.start} × {cols.stop - cols.start}"
    what = (
        "log10 |entry| (left) and why each zero is zero (right)"
        if codes is not None
        else ("log10 |entry|")
    )
    return path, (
        f"The block of H with rows {zoom[0]} and columns {zoom[1]} alone ({size}): {what}; "
        "long ticks mark where each output unit's consecutive weights start."
    )


def _heatmap_caption(part: str, n: int, factor: int, zeros: int) -> str:
    scale = (
        "one pixel per entry or more"
        if factor == 1
        else f"each pixel the largest |entry| of {factor}×{factor} entries"
    )
    return (
        f"log10 |{part}| of the {TITLES[part]} ({n} × {n}), {scale}; lines separate the "
        f"parameter blocks, white entries ({zeros:,}) are exactly zero."
    )


def _reasons_caption(part: str, codes: np.ndarray, labels: list[str], tile: Tiling) -> str:
    unexplained = int((codes == labels.index(UNEXPLAINED)).sum()) if UNEXPLAINED in labels else 0
    zeros = int((codes >= 0).sum())
    scale = (
        ""
        if not tile.aggregated
        else f" (each pixel the most frequent class of {tile.factor}×{tile.factor} entries, "
        "red if any is unexplained)"
    )
    return (
        f"Every exactly-zero entry of {part} ({zeros:,}) coloured by why it is zero, every "
        f"non-zero entry in grey by log10 |value|{scale}; {unexplained:,} zeros are "
        "unexplained (red)."
    )


def _parts(result: DenseHessian) -> list[str]:
    parts = ["H"]
    if result.gauss_newton is not None and result.residual is not None:
        parts += ["G", "R"]
    return parts


def _codes(codes) -> np.ndarray:
    return codes.detach().cpu().numpy() if hasattr(codes, "detach") else np.asarray(codes)


def _save(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a 256-colour palette PNG, for pages that embed every figure.

    A 910 × 910 heatmap takes 286 kB instead of matplotlib's 1.2 MB RGBA; its 1,268 colours
    (viridis' 256 and anti-aliased text) come back within 5/255 per channel
    (``Quantize.MAXCOVERAGE``; ``FASTOCTREE`` bands the colour bars, 14/255).
    """
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    pixels.quantize(256, method=Image.Quantize.MAXCOVERAGE).save(path, format="png")
    return Path(path)
