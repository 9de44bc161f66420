"""Sphinx configuration: the API reference from the docstrings, and the user guide.

Sphinx with autodoc + napoleon rather than mkdocs + mkdocstrings: hesskit's docstrings are
Google style with reStructuredText inline markup (````x````, ``:func:`name```), which Sphinx
renders and cross-links natively; mkdocstrings would show that markup raw. The guides are
Markdown (MyST), like ``docs/distributed.md``. Built by ``make docs`` with warnings as errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import hesskit  # noqa: E402

project = "hesskit"
author = "the hesskit developers"
release = version = hesskit.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "alabaster"
html_static_path: list[str] = []
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields: no second description of a dataclass field
myst_heading_anchors = 3
# The package's own names are resolved; third-party types in signatures (Tensor, nn.Module)
# are not linked (no network at build time, so no intersphinx).
nitpicky = False


def _absolute_values(app, what, name, obj, options, lines: list[str]) -> None:
    """Docstrings write mathematics in plain Unicode, where ``|x|`` is an absolute value,
    not a reStructuredText substitution: escape every ``|`` outside literals."""
    for i, line in enumerate(lines):
        parts = line.split("``")
        lines[i] = "``".join(part if k % 2 else part.replace("|", "\\|")
                             for k, part in enumerate(parts))


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _absolute_values)
