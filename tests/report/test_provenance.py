"""Each section of a page shows the command and the model that produced it; ``diagonal``
writes its page; the spectrum's figures say what they draw."""

from __future__ import annotations

import json

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from hesskit.report.hessian_plots import spectra_figure
from hesskit.report.pages import PAGE_NAME
from hesskit.report.provenance import COMMAND_FILE, record_command
from hesskit.report.tour import write_tour_page


def test_every_page_command_records_its_command_line_and_model(tour_folder):
    spectrum = (tour_folder / "spectrum" / COMMAND_FILE).read_text().splitlines()
    assert spectrum[0].startswith("$ hesskit spectrum --layers 64,3,10 --samples 24")
    assert spectrum[1] == ("  model: MLP 64-3-10 (relu), cross_entropy loss, 24 digits samples, "
                           "float64, seed 0")
    newton = (tour_folder / "newton" / COMMAND_FILE).read_text()
    assert newton.count("$ hesskit newton") == 2  # both runs that wrote the folder


def test_pages_show_the_command_above_each_section(tour_folder):
    page = write_tour_page(tour_folder).read_text()
    for command in ("activations", "newton", "neuron", "hessian", "spectrum", "diagonal"):
        assert f"<pre>$ hesskit {command} " in page, command
    own = (tour_folder / "spectrum" / PAGE_NAME).read_text()
    assert "<pre>$ hesskit spectrum" in own and "model: MLP 64-3-10" in own


def test_diagonal_writes_its_page(tour_folder):
    page = (tour_folder / "diagonal" / PAGE_NAME).read_text()
    assert "RMSProp against the true diagonal" in page and "<img" in page


def test_a_command_run_twice_is_listed_once(tmp_path):
    record_command(tmp_path, ["hessian", "--samples", "8"], "MLP")
    record_command(tmp_path, ["hessian", "--samples", "8"], "MLP")
    record_command(tmp_path, ["hessian", "--samples", "9 x"])
    assert (tmp_path / COMMAND_FILE).read_text().splitlines() == [
        "$ hesskit hessian --samples 8", "  model: MLP", "$ hesskit hessian --samples '9 x'"]


def test_spectrum_records_the_smoothing_width_and_takes_the_exact_diagonal(tour_folder):
    record = json.loads((tour_folder / "spectrum" / "spectrum.json").read_text())
    nodes = np.asarray(record["density"]["nodes"])[np.asarray(record["density"]["weights"]) > 0]
    assert record["density"]["width"] == 0.01 * (nodes.max() - nodes.min())
    assert record["diagonal"]["method"] == "exact" and record["diagonal"]["probes"] == 0


def test_symlog_eigenvalue_axis_labels_nothing_beside_zero():
    """Ticks at ±(the linear band) print on top of 0's label: only 0 is kept near it."""
    spectra = {"H": np.array([-1e-13, 0.0, 1e-13, 0.5, 3.0, 12.0])}
    figure = spectra_figure(spectra, {"H": 1}, linear_below=1e-13)
    FigureCanvasAgg(figure).draw()
    axes = figure.axes[0]
    low, high = axes.get_ylim()
    shown = [t for t in axes.get_yticks() if low <= t <= high]
    assert 0 in shown
    assert all(t == 0 or abs(t) >= 1e-11 for t in shown), shown
