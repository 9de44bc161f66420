"""How every ``hesskit`` command renders ``--help``: plain text that fits the terminal.

The sub-commands' descriptions are their module docstrings, written in reStructuredText
for the API reference (````--out````, ``:func:`name```). :class:`HelpFormatter` turns
them into plain text and re-wraps them to the terminal's width (argparse's own
``RawDescriptionHelpFormatter`` would print the docstring's lines as they are, 90 columns
and markup included), keeps numbered and bulleted lists as lists, never breaks a word at a
hyphen (``hesskit-out/train`` stays whole), and adds ``(default X)`` to every option whose
help does not state its default already.
"""

from __future__ import annotations

import argparse
import re
import textwrap

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_INTERPRETED = re.compile(r"`([^`]+)`")
_LIST_ITEM = re.compile(r"^(\d+\.|[-*•])\s+")


def plain_text(text: str) -> str:
    """``text`` without reStructuredText inline markup: ````x```` → ``x``,
    ``:func:`~a.b``` → ``b``, ``:mod:`a.b``` → ``a.b``, ```x``` → ``x``.

    >>> plain_text("writes ``log.jsonl`` (:func:`~hesskit.training.train`)")
    'writes log.jsonl (train)'
    """

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        return target.rsplit(".", 1)[-1] if match.group(0).split("`")[1].startswith("~") \
            else target

    text = _ROLE.sub(role, text)
    text = _LITERAL.sub(r"\1", text)
    return _INTERPRETED.sub(r"\1", text)


def fill_paragraphs(text: str, width: int, indent: str = "") -> str:
    """Plain ``text`` wrapped to ``width`` columns, paragraph by paragraph.

    Paragraphs are separated by blank lines. A line that starts with ``1.``, ``-``, ``*``
    or ``•`` begins a list item, wrapped with a hanging indent; other lines continue the
    item or paragraph above them. Words are never split, also not at hyphens.
    """
    blocks = []
    for paragraph in re.split(r"\n[ \t]*\n", plain_text(textwrap.dedent(text)).strip()):
        items: list[tuple[str, str]] = []  # (hanging indent, words)
        for line in paragraph.splitlines():
            stripped = line.strip()
            marker = _LIST_ITEM.match(stripped)
            if marker or not items:
                hang = " " * len(marker.group(0)) if marker else ""
                items.append((hang, stripped))
            else:
                items[-1] = (items[-1][0], f"{items[-1][1]} {stripped}")
        blocks.append("\n".join(
            textwrap.fill(words, width, initial_indent=indent,
                          subsequent_indent=indent + hang, break_on_hyphens=False,
                          break_long_words=False)
            for hang, words in items))
    return "\n\n".join(blocks)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with plain, re-wrapped descriptions and every default shown."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return fill_paragraphs(text, width, indent)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(plain_text(" ".join(text.split())), width,
                             break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text is None or "default" in text or not _shows_default(action):
            return text
        shown = _default_text(action.default).replace("%", "%%")
        return f"{text} (default {shown})"


def _shows_default(action: argparse.Action) -> bool:
    """Whether ``action``'s default is a value worth printing (not a flag's False/None)."""
    if not action.option_strings or action.nargs == 0:
        return False  # positionals, --flags, --help, --version
    return action.default is not None and action.default is not argparse.SUPPRESS


def _default_text(default: object) -> str:
    if isinstance(default, (list, tuple)):
        return ",".join(str(item) for item in default)
    return str(default)
