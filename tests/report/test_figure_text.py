"""Every figure's text is readable where the page shows it: at least 9 px at the image's
displayed size in a 1280-px-wide window (pages.CSS: 1150 px of content, images at most 900
px high and never enlarged)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from hesskit.report import hessian_plots
from report.conftest import run_demo_steps

CONTENT_WIDTH_PX = 1150
MAX_HEIGHT_PX = 900
MIN_TEXT_PX = 9.0


def smallest_text(figure: Figure, dpi: float) -> tuple[float, str]:
    """The smallest visible text of ``figure`` in displayed pixels, and that text."""
    width, height = figure.get_size_inches() * dpi
    scale = min(1.0, CONTENT_WIDTH_PX / width, MAX_HEIGHT_PX / height)
    sizes = [(text.get_fontsize() * dpi / 72 * scale, text.get_text())
             for text in figure.findobj(Text) if text.get_visible() and text.get_text().strip()]
    return min(sizes) if sizes else (float("inf"), "")


@pytest.fixture(scope="module")
def text_sizes(tmp_path_factory) -> dict[str, tuple[float, str]]:
    """Each PNG the demo's steps and a benchmark report write: its smallest text."""
    sizes: dict[str, tuple[float, str]] = {}
    original = Figure.savefig

    def recording(self, fname, *args, **kwargs):
        dpi = kwargs.get("dpi") or self.dpi
        if dpi == "figure":
            dpi = self.dpi
        self.canvas.draw()  # lays out the tick labels, which are Text objects too
        name = f"buffer{len(sizes)}" if hasattr(fname, "write") else Path(str(fname)).name
        sizes[name] = smallest_text(self, float(dpi))
        return original(self, fname, *args, **kwargs)

    original_save = hessian_plots._save  # the heatmaps' palette PNG writer

    def recording_save(figure, path):
        FigureCanvasAgg(figure).draw()
        sizes[Path(str(path)).name] = smallest_text(figure, float(figure.dpi))
        return original_save(figure, path)

    out = tmp_path_factory.mktemp("figures")
    mp = pytest.MonkeyPatch()
    mp.setattr(Figure, "savefig", recording)
    mp.setattr(hessian_plots, "_save", recording_save)
    try:
        run_demo_steps(out)  # the tiny benchmark report (figures drawn from JSON) included
    finally:
        mp.undo()
    return sizes


def test_every_figure_has_text_of_at_least_9_px_where_it_is_shown(text_sizes):
    assert len(text_sizes) >= 10, sorted(text_sizes)
    small = {name: f"{px:.1f} px: {text!r}" for name, (px, text) in text_sizes.items()
             if px < MIN_TEXT_PX}
    assert not small, small


def test_the_check_finds_small_text():
    figure = Figure(figsize=(20, 4), dpi=100)  # 2000 px wide: shown at 0.575
    figure.text(0.5, 0.5, "tiny", fontsize=10)  # 13.9 px drawn, 8 px shown
    assert smallest_text(figure, 100)[0] == pytest.approx(10 * 100 / 72 * 0.575)
    assert smallest_text(figure, 100)[0] < MIN_TEXT_PX
    assert matplotlib.get_backend().lower() == "agg"
