"""Every command's ``--help`` as a user at an 80-column terminal reads it."""

from __future__ import annotations

import argparse

import pytest

from hesskit.cli.help_format import fill_paragraphs, plain_text
from hesskit.cli.main import COMMANDS, build_parser
from hesskit.problems import PROBLEM_NAMES

WIDTH = 80


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"hesskit": parser, **subparsers.choices}


@pytest.fixture
def parsers(monkeypatch) -> dict[str, argparse.ArgumentParser]:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    return _parsers()


def test_every_command_is_covered(parsers):
    assert set(parsers) == {"hesskit", *COMMANDS}


@pytest.mark.parametrize("command", ["hesskit", *COMMANDS])
def test_help_fits_80_columns_without_markup(parsers, command):
    text = parsers[command].format_help()
    long_lines = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not long_lines, f"{command} --help has lines over {WIDTH} columns: {long_lines}"
    for markup in ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:"):
        assert markup not in text, f"{command} --help shows reStructuredText {markup!r}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default(parsers, command):
    parser = parsers[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.default is None:
            continue
        if action.default is argparse.SUPPRESS:
            continue
        shown = formatter._get_help_string(action) or ""
        assert "default" in shown, f"{command} {action.option_strings[0]} hides its default"


@pytest.mark.parametrize("command", ["train", "bench", "precondition"])
def test_problem_help_lists_every_choice(parsers, command):
    text = " ".join(parsers[command].format_help().split())
    for name in PROBLEM_NAMES:
        assert name in text, f"{command} --help does not list the problem {name}"


def test_seed_default_is_shown_where_a_command_takes_a_seed(parsers):
    for command, parser in parsers.items():
        text = " ".join(parser.format_help().split())
        if "--seed SEED" in text:
            help_text = text.split("--seed SEED", 2)[-1]
            assert "default" in help_text.split("--", 1)[0], f"{command} --seed"


def test_plain_text_removes_inline_markup():
    assert plain_text("``--out`` (:func:`~a.b.f`, :mod:`a.b`, `x`)") == "--out (f, a.b, x)"


def test_fill_keeps_list_items_with_a_hanging_indent_and_never_splits_at_hyphens():
    text = "Intro words here.\n\n1. first item that is long enough to wrap\n   around\n2. second"
    assert fill_paragraphs(text, 24) == (
        "Intro words here.\n\n1. first item that is\n   long enough to wrap\n   around\n"
        "2. second")
    assert fill_paragraphs("see hesskit-out/train/x-y now", 12) == (
        "see\nhesskit-out/train/x-y\nnow")
