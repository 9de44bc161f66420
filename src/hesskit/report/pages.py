"""Self-contained HTML pages: one way to build every page hesskit writes.

A page is one file with everything inside it: CSS in a ``<style>`` element, figures as
``data:image/png;base64`` URIs, no script and no external URL, so that it opens in any
browser, offline, and can be mailed as one attachment. Every figure is a ``<figure>`` with
an ``<img alt>`` and a ``<figcaption>``; every section opens with one sentence saying what
it shows. The pieces are plain functions returning HTML text:

* :func:`figure` (a PNG as bytes or a file, with its caption), :func:`table`,
  :func:`paragraph`, :func:`section`;
* :func:`document` joins them into a page with a title and an optional table of contents;
  :func:`write_page` writes it (UTF-8).

Text is escaped here; callers pass plain strings, never HTML, except the already built
parts (the return values of these functions).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hesskit.atomic_write import write_text_atomically

PAGE_NAME = "index.html"
"""The file name of a command's page in its output folder."""

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f0f0f0; }
figure { margin: 1.5em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; } .note { color: #555; } code { background: #f5f5f5; }
section { border-top: 1px solid #ddd; margin-top: 2em; } .lead { font-size: 1.05em; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 0.88em; white-space: pre-wrap;
      overflow-wrap: anywhere; }
nav ol { columns: 2; } .missing { color: #a33; } .scroll { overflow-x: auto; }
dt { font-weight: bold; }
table.text td, table.text th { text-align: left; } td { white-space: nowrap; }
table.text td { white-space: normal; } caption { text-align: left; color: #555; }
figure img { max-height: 900px; object-fit: contain; }
"""

_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Section:
    """One section of a page: ``title``, the sentence ``lead`` of what it shows, ``parts``."""

    title: str
    lead: str
    parts: tuple[str, ...] = ()

    @property
    def anchor(self) -> str:
        """The section's id: its title in lower case, runs of other characters as ``-``."""
        return _SLUG.sub("-", self.title.lower()).strip("-") or "section"


def escape(text: object) -> str:
    """``str(text)`` with ``& < > " '`` escaped for HTML."""
    return html.escape(str(text))


def figure(png: bytes | Path, caption: str, *, key: str | None = None) -> str:
    """A ``<figure>``: the PNG inline (base64) with ``caption`` as alt text and figcaption.

    Args:
        png: the image's bytes, or the path of a PNG file.
        caption: one or two sentences saying what the figure shows.
        key: the figure's HTML id (optional).

    Raises:
        ValueError: ``png`` is not a PNG (wrong signature) or the caption is empty.
    """
    data = Path(png).read_bytes() if isinstance(png, Path) else png
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"not a PNG image: {png if isinstance(png, Path) else 'bytes'}")
    if not caption.strip():
        raise ValueError("every figure needs a caption")
    encoded = base64.b64encode(data).decode("ascii")
    ident = f' id="{escape(key)}"' if key else ""
    return (
        f'<figure{ident}><img alt="{escape(caption)}" src="data:image/png;base64,'
        f'{encoded}"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def table(
    head: Sequence[str],
    body: Iterable[Sequence[object]],
    *,
    caption: str | None = None,
    text: bool = False,
) -> str:
    """A ``<table>`` with header ``head`` and rows ``body`` (cells converted with ``str``).

    Numbers are right-aligned (all columns but the first); ``text=True`` left-aligns every
    column. A table wider than the page scrolls inside its own box.
    """
    header = "".join(f"<th>{escape(cell)}</th>" for cell in head)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>" for cells in body
    )
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    kind = ' class="text"' if text else ""
    return (
        f'<div class="scroll"><table{kind}>{title}<thead><tr>{header}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def paragraph(text: str, *, note: bool = False) -> str:
    """A ``<p>`` (class ``note`` for the grey small print)."""
    return f'<p class="note">{escape(text)}</p>' if note else f"<p>{escape(text)}</p>"


def preformatted(text: str) -> str:
    """A ``<pre>`` block (command output kept as it was printed)."""
    return f"<pre>{escape(text)}</pre>"


def link(href: str, text: str) -> str:
    """An ``<a>`` to a file next to the page (a relative path; never an external URL)."""
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def missing(what: str) -> str:
    """A visible note that an input of the page was not found (the page is still written)."""
    return f'<p class="missing">{escape(what)}</p>'


def section(item: Section, *, level: int = 2) -> str:
    """The ``<section>`` of ``item``: heading, lead sentence, then its parts."""
    return (
        f'<section id="{item.anchor}"><h{level}>{escape(item.title)}</h{level}>'
        f'<p class="lead">{escape(item.lead)}</p>' + "\n".join(item.parts) + "</section>"
    )


def document(
    title: str, parts: Iterable[str | Section], *, intro: str | None = None, contents: bool = False
) -> str:
    """The whole page: ``<h1>title</h1>``, ``intro``, then each part (sections rendered).

    Args:
        title: the page title (also the ``<title>``).
        parts: HTML fragments and :class:`Section` objects, in order.
        intro: one paragraph under the title.
        contents: add a table of contents linking every section.
    """
    parts = list(parts)
    sections = [p for p in parts if isinstance(p, Section)]
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if intro:
        head.append(paragraph(intro))
    if contents and sections:
        items = "".join(f'<li><a href="#{s.anchor}">{escape(s.title)}</a></li>' for s in sections)
        head.append(f"<nav><ol>{items}</ol></nav>")
    body = [section(p) if isinstance(p, Section) else p for p in parts]
    return "\n".join([*head, *(b for b in body if b), "</body></html>"])


def write_page(
    path: Path,
    title: str,
    parts: Iterable[str | Section],
    *,
    intro: str | None = None,
    contents: bool = False,
) -> Path:
    """Write :func:`document` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    write_text_atomically(path, document(title, parts, intro=intro, contents=contents))
    return path
