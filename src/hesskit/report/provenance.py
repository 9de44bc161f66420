"""Where a page's results came from: the command line and the model, shown on every section.

The CLI announces the command it runs (:func:`set_pending`: its command line and, for the
commands that build a model, the model in words); the command's page writer, and the CLI
after a successful run, append it to ``command.txt`` in the folder written
(:func:`record_pending`, :func:`record_command`). A page's section shows that file's lines
above its tables and figures (:func:`command_block`), so a reader sees how to reproduce
what they look at. Nothing is written for a command that writes no folder.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from hesskit.atomic_write import write_text_atomically
from hesskit.report.pages import preformatted

COMMAND_FILE = "command.txt"

_pending: tuple[list[str], str | None] | None = None


def set_pending(argv: Sequence[str] | None, model: str | None = None) -> None:
    """The command now running (``None``: none), for :func:`record_pending`."""
    global _pending
    _pending = None if argv is None else (list(argv), model)


def record_pending(folder: Path) -> None:
    """:func:`record_command` of the command now running, if any, into ``folder``."""
    if _pending is not None:
        record_command(folder, *_pending)


def record_command(folder: Path, argv: Sequence[str], model: str | None = None) -> Path:
    """Append ``$ hesskit ARGV`` (and ``model: …``) to ``folder/command.txt``, once.

    A folder that several runs write to (the demo's three Newton runs) lists each command;
    a command run again is not listed twice.
    """
    path = Path(folder) / COMMAND_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    new = [f"$ hesskit {shlex.join(argv)}"] + ([f"  model: {model}"] if model else [])
    if new[0] not in lines:
        write_text_atomically(path, "\n".join([*lines, *new]) + "\n")
    return path


def command_block(folder: Path) -> list[str]:
    """The ``<pre>`` of ``folder/command.txt`` as a one-item list (empty if there is none)."""
    path = Path(folder) / COMMAND_FILE
    if not path.is_file():
        return []
    return [preformatted(path.read_text(encoding="utf-8").rstrip())]
