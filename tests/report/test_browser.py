"""The pages in a real headless browser: they load, every image decodes and is captioned,
and the console stays free of errors.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the
``selenium`` package (the ``dev`` extra); without them every test here is skipped with the
reason. The pages are built from the tiny run of ``conftest.tour_folder`` (seconds).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hesskit.report.pages import PAGE_NAME
from hesskit.report.tour import write_hessian_page, write_tour_page

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")

IMAGES = """return Array.from(document.images).map(img => {
  const fig = img.closest('figure');
  const caption = fig ? fig.querySelector('figcaption') : null;
  return {complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
          caption: caption ? caption.textContent.trim() : ''};
});"""


def _browser_missing() -> str | None:
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if absent:
        return (f"no headless browser: {' and '.join(absent)} missing "
                "(apt-get install chromium chromium-driver, as .ci/run does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is missing (pip install -e '.[dev]')"
    return None


pytestmark = pytest.mark.skipif(_browser_missing() is not None,
                                reason=_browser_missing() or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="hesskit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


LAYOUT = """const wide = [];
for (const box of document.querySelectorAll('section, pre, div.scroll, figure')) {
  if (box.scrollWidth > box.clientWidth + 1) {
    wide.push(box.tagName + (box.id ? '#' + box.id : '') + ': ' + box.scrollWidth + ' > '
              + box.clientWidth);
  }
}
const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);
const repeated = ids.filter((id, i) => ids.indexOf(id) !== i);
return {wide: wide, repeated: repeated,
        page: document.documentElement.scrollWidth > window.innerWidth};"""


def _check_page(driver, page: Path) -> list[dict]:
    """Open ``page`` in a 1280-px-wide window; assert it loaded with no console error, no
    box wider than its place (sections, text, tables, figures) and no id twice; return its
    images' state."""
    driver.set_window_size(1280, 1000)
    driver.get_log("browser")  # drop what earlier pages left
    driver.get(page.resolve().as_uri())
    # a large page on a busy machine can still be parsing when get() returns: wait for it
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    assert driver.title, "the page has no <title>"
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
    layout = driver.execute_script(LAYOUT)
    assert layout["wide"] == [] and not layout["page"], f"horizontal overflow: {layout}"
    assert layout["repeated"] == [], f"ids used twice: {layout['repeated']}"
    images = driver.execute_script(IMAGES)
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
        assert image["caption"], "an image without a <figcaption>"
    return images


def test_tour_page_loads_and_every_figure_decodes_with_a_caption(browser, tour_folder):
    page = write_tour_page(tour_folder)
    images = _check_page(browser, page)
    # activations, 2 Newton runs, neuron, 4 hessian figures at least, 2 spectrum, diagonal,
    # bench: every figure the steps wrote is on the page.
    written = sorted(tour_folder.glob("*/*.png"))
    assert len(images) == len(written) + 1  # + the bench's error curves (drawn from JSON)
    sections = browser.execute_script(
        "return Array.from(document.querySelectorAll('section > h2')).map(h => h.textContent)")
    assert sections == ["Transfer functions", "Newton's diagnoses", "One ReLU neuron",
                        "Structure of H = G + R", "Spectrum", "RMSProp against the true diagonal",
                        "Optimizer benchmark"]


def test_hessian_page_loads_with_chosen_figures_and_captions(browser, tour_folder, tmp_path):
    folder = Path(shutil.copytree(tour_folder / "hessian", tmp_path / "hessian"))
    figures = [(folder / "hessian.png", "H first"), (folder / "eigenvalues.png", "then spectra")]
    page = write_hessian_page(folder, figures)
    images = _check_page(browser, page)
    assert [image["caption"] for image in images] == ["H first", "then spectra"]


def test_hessian_page_falls_back_to_every_png_of_the_folder(browser, tour_folder):
    folder = tour_folder / "hessian"
    images = _check_page(browser, write_hessian_page(folder))
    assert len(images) == len(list(folder.glob("*.png")))


def test_spectrum_page_written_by_the_command_loads(browser, tour_folder):
    images = _check_page(browser, tour_folder / "spectrum" / PAGE_NAME)
    assert len(images) == 2


def test_check_would_fail_on_a_broken_image_and_a_console_error(browser, tmp_path):
    """The checks above can fail: a page with an undecodable image and a script error."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><figure>'
                    '<img src="data:image/png;base64,AAAA"><figcaption>c</figcaption></figure>'
                    "<script>console.error('boom')</script></body></html>")
    with pytest.raises(AssertionError, match="boom"):
        _check_page(browser, page)
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><figure>'
                    '<img src="data:image/png;base64,AAAA"><figcaption>c</figcaption></figure>'
                    "</body></html>")
    with pytest.raises(AssertionError, match="'width': 0"):
        _check_page(browser, page)


def test_check_would_fail_on_overflow_and_a_repeated_id(browser, tmp_path):
    page = tmp_path / "wide.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body>'
                    '<section id="a"><pre style="white-space: pre">' + "x" * 400 + "</pre>"
                    '</section></body></html>')
    with pytest.raises(AssertionError, match="horizontal overflow"):
        _check_page(browser, page)
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body>'
                    '<p id="a">1</p><p id="a">2</p></body></html>')
    with pytest.raises(AssertionError, match="ids used twice"):
        _check_page(browser, page)


def test_diagonal_page_written_by_the_command_loads(browser, tour_folder):
    images = _check_page(browser, tour_folder / "diagonal" / PAGE_NAME)
    assert len(images) == 1
