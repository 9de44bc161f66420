"""The pages of the tour: the demo's single page and the pages of the analysis commands.

* :func:`write_hessian_page`, :func:`write_spectrum_page` and :func:`write_diagonal_page`:
  the page ``index.html`` of ``hesskit hessian``, ``spectrum`` and ``diagonal`` in their
  ``--out`` folders;
* :func:`write_tour_page`: the demo's single page ``<out>/index.html``, every section in
  the order of the demo's steps.

Each page is one self-contained file (:mod:`hesskit.report.pages`); the sections are
drawn from the files the commands wrote (:mod:`hesskit.report.sections`).
"""

from __future__ import annotations

from pathlib import Path

from hesskit.report.pages import PAGE_NAME, write_page
from hesskit.report.provenance import record_pending
from hesskit.report.sections import (
    FigureList,
    activations_section,
    bench_section,
    diagonal_section,
    hessian_section,
    neuron_section,
    newton_section,
    spectrum_section,
)


def write_hessian_page(folder: Path, figures: FigureList | None = None) -> Path:
    """``folder/index.html`` for ``hesskit hessian``: the structure section alone.

    Args:
        folder: the command's ``--out`` folder (``structure.json`` and the PNGs).
        figures: (PNG path, caption) pairs in page order, e.g. from
            ``report.hessian_plots.hessian_figures``; default: those ``structure.json``
            lists under ``"figures"`` (the demo's page uses the same), else every PNG there.
    """
    folder = Path(folder)
    record_pending(folder)
    return write_page(
        folder / PAGE_NAME,
        "hesskit hessian: the structure of H = G + R",
        [hessian_section(folder, figures)],
    )


def write_spectrum_page(folder: Path) -> Path:
    """``folder/index.html`` for ``hesskit spectrum``."""
    folder = Path(folder)
    record_pending(folder)
    return write_page(folder / PAGE_NAME, "hesskit spectrum", [spectrum_section(folder)])


def write_diagonal_page(folder: Path) -> Path:
    """``folder/index.html`` for ``hesskit diagonal``."""
    folder = Path(folder)
    record_pending(folder)
    return write_page(folder / PAGE_NAME, "hesskit diagonal", [diagonal_section(folder)])


TOUR_FOLDERS = ("activations", "newton", "neuron", "hessian", "spectrum", "diagonal", "bench")
"""The demo's sub-folders, in the order of its steps and of the page's sections."""


def write_tour_page(out: Path, *, hessian_figures: FigureList | None = None) -> Path:
    """``out/index.html``: every section of the demo, read from ``out/<step>/``."""
    out = Path(out)
    sections = [
        activations_section(out / "activations"),
        newton_section(out / "newton"),
        neuron_section(out / "neuron"),
        hessian_section(out / "hessian", hessian_figures),
        spectrum_section(out / "spectrum"),
        diagonal_section(out / "diagonal"),
        bench_section(out / "bench", out),
    ]
    return write_page(
        out / PAGE_NAME,
        "The hesskit tour",
        sections,
        contents=True,
        intro="What hesskit demo computed, section by section; every "
        "figure and table comes from the files next to this page.",
    )
