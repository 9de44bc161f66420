"""Self-contained pages: inline figures that decode to the files, captions, no external
resources, and the tour's sections drawn faithfully from the JSON the commands wrote."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest

from hesskit.report import pages
from hesskit.report.pages import PAGE_NAME, Section, document, figure, table
from hesskit.report.sections import hessian_section, listed_figures
from hesskit.report.tour import (
    TOUR_FOLDERS,
    write_hessian_page,
    write_spectrum_page,
    write_tour_page,
)

PNG = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects the images (with the caption of their figure), links, scripts and cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.scripts = 0
        self.cells: list[str] = []
        self.rows: list[list[str]] = []
        self.heads: list[list[str]] = []
        self.ids: list[str] = []
        self._figure: dict | None = None
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "figure":
            self._figure = {"src": None, "alt": None, "caption": ""}
        elif tag == "img":
            image = {"src": attrs.get("src"), "alt": attrs.get("alt"), "caption": ""}
            self.images.append(image)
            if self._figure is not None:
                self._figure = image
        elif tag in ("a", "link"):
            self.links.append(attrs.get("href", ""))
        elif tag == "script":
            self.scripts += 1
        if tag == "tr":
            self.rows.append([])
        elif tag == "thead":
            self.heads.append([])
        if tag in ("figcaption", "td", "th"):
            self._in = tag
            if tag == "td":
                self.cells.append("")
                self.rows[-1].append("")
            elif tag == "th":
                self.heads[-1].append("")

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "figcaption" and self._figure is not None:
            self._figure["caption"] += data
        elif self._in == "td":
            self.cells[-1] += data
            self.rows[-1][-1] += data
        elif self._in == "th":
            self.heads[-1][-1] += data


def _decoded(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix):])


def test_figure_embeds_the_file_bytes_exactly_and_escapes_the_caption(tmp_path):
    path = tmp_path / "a.png"
    matplotlib.image.imsave(path, [[0.0, 1.0], [1.0, 0.0]])
    page = _Page(figure(path, 'H < G & "R"', key="k"))
    (image,) = page.images
    assert _decoded(image["src"]) == path.read_bytes()
    assert image["caption"] == image["alt"] == 'H < G & "R"'
    assert page.ids == ["k"]


@pytest.mark.parametrize(("png", "caption", "message"), [
    (b"GIF89a", "c", "not a PNG"), (PNG + b"x", "  ", "caption"),
])
def test_figure_refuses_what_is_not_a_captioned_png(png, caption, message):
    with pytest.raises(ValueError, match=message):
        figure(png, caption)


def test_document_links_every_section_and_loads_nothing_from_outside():
    sections = [Section("Structure of H = G + R", "one."), Section("Spectrum", "two.")]
    text = document("T <1>", [*sections, table(("a", "b"), [(1, "<x>")])], contents=True)
    page = _Page(text)
    assert page.links == ["#structure-of-h-g-r", "#spectrum"]
    assert page.ids == ["structure-of-h-g-r", "spectrum"]
    assert page.cells == ["1", "<x>"]
    assert "<title>T &lt;1&gt;</title>" in text and f"<style>{pages.CSS}</style>" in text
    assert page.scripts == 0 and "http" not in text


def test_tour_page_has_every_section_each_figure_inline_and_captioned(tour_folder):
    text = write_tour_page(tour_folder).read_text(encoding="utf-8")
    page = _Page(text)
    assert re.findall(r'<section id="([^"]+)"', text) == [
        "transfer-functions", "newton-s-diagnoses", "one-relu-neuron", "structure-of-h-g-r",
        "spectrum", "rmsprop-against-the-true-diagonal", "optimizer-benchmark"]
    assert text.count('<p class="lead">') == len(TOUR_FOLDERS)
    assert 'class="missing"' not in text
    files = {path.read_bytes() for path in tour_folder.glob("*/*.png")}
    embedded = [_decoded(image["src"]) for image in page.images]
    assert files <= set(embedded) and len(embedded) == len(files) + 1  # + bench curves
    for image, data in zip(page.images, embedded, strict=True):
        assert image["caption"].strip() and image["alt"] == image["caption"]
        assert matplotlib.image.imread(io.BytesIO(data)).shape[0] > 0
    assert page.scripts == 0 and "http" not in text
    assert [link for link in page.links if not link.startswith("#")] == ["bench/report.html"]
    assert (tour_folder / "bench" / "report.html").is_file()


def test_tour_sections_state_what_each_command_concluded(tour_folder):
    text = write_tour_page(tour_folder).read_text(encoding="utf-8")
    for name in ("relu", "tanh"):
        run = json.loads((tour_folder / "newton" / f"newton_{name}.json").read_text())
        assert pages.escape(run["message"]) in text
    neuron = json.loads((tour_folder / "neuron" / "neuron.json").read_text())
    assert pages.escape(neuron["message"]) in text
    assert "Adam" in text and "SGD" in text  # the bench's summary table


def test_hessian_zero_table_gives_each_block_and_matrix_its_json_counts(tour_folder):
    folder = tour_folder / "hessian"
    data = json.loads((folder / "structure.json").read_text())
    text = pages.section(hessian_section(folder, figures=[]))
    page = _Page(text)
    (head,) = [h for h in page.heads if h[:3] == ["block", "matrix", "zeros"]]
    reasons = [h.replace(" ", "_") for h in head[3:]]
    rows = [r for r in page.rows if len(r) == len(head) and r[1] in ("H", "G", "R")]
    expected = []
    for block in data["structure"]["blocks"]:
        for k, (part, zeros) in enumerate(block["zeros"].items()):
            counts = block["zero_reasons"].get(part, {})
            assert set(counts) <= set(reasons) and sum(counts.values()) == zeros
            label = f"{block['rows']} × {block['columns']}" if k == 0 else ""
            expected.append([label, part, f"{zeros:,}" if zeros else "–",
                             *(f"{counts[r]:,}" if counts.get(r) else "–" for r in reasons)])
    assert rows == expected
    assert all(f"<dt>{r.replace('_', ' ')}</dt>" in text for r in reasons)
    assert page.images == []


def test_hessian_page_and_tour_use_the_figures_structure_json_lists(tmp_path, tour_folder):
    folder = Path(shutil.copytree(tour_folder / "hessian", tmp_path / "hessian"))
    chosen = [(folder / "residual.png", "R alone"), (folder / "hessian.png", "then H")]
    page = _Page(write_hessian_page(folder, chosen).read_text(encoding="utf-8"))
    assert [i["caption"] for i in page.images] == ["R alone", "then H"]
    assert [_decoded(i["src"]) for i in page.images] == [p.read_bytes() for p, _ in chosen]
    data = json.loads((folder / "structure.json").read_text())
    data["figures"] = [{"file": p.name, "caption": c} for p, c in chosen]
    (folder / "structure.json").write_text(json.dumps(data))
    assert listed_figures(data, folder) == chosen
    for written in (write_hessian_page(folder), write_tour_page(tmp_path)):
        images = _Page(written.read_text(encoding="utf-8")).images
        assert [i["caption"] for i in images] == ["R alone", "then H"]


def test_spectrum_page_reports_the_json_eigenvalues(tour_folder):
    folder = tour_folder / "spectrum"
    assert (folder / PAGE_NAME).is_file()  # written by `hesskit spectrum` itself
    values = json.loads((folder / "spectrum.json").read_text())["eigenvalues"]["values"]
    page = _Page(write_spectrum_page(folder).read_text(encoding="utf-8"))
    assert [f"{v:.6e}" for v in values] == page.cells[1:3 * len(values):3]
    assert len(page.images) == 2


def test_a_missing_step_is_a_visible_note_not_an_error(tmp_path: Path):
    text = write_tour_page(tmp_path).read_text(encoding="utf-8")
    assert text.count('class="missing"') == len(TOUR_FOLDERS)  # one note per step
    assert "structure.json missing" in text and "report.json" in text
