"""Where a page's results came from: the command line and the model, shown on every section.

After a command succeeds, the CLI appends its command line (and, for the commands that
build a model, the model in words) to ``command.txt`` in the folder it wrote
(:func:`record_command`); a page's section shows that file's lines above its tables and
figures (:func:`command_block`), so a reader sees how to reproduce what they look at.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from hesskit.report.pages import preformatted

COMMAND_FILE = "command.txt"


def record_command(folder: Path, argv: Sequence[str], model: str | None = None) -> Path:
    """Append ``$ hesskit ARGV`` (and ``model: …``) to ``folder/command.txt``, once.

    A folder that several runs write to (the demo's three Newton runs) lists each command;
    a command run again is not listed twice.
    """
    path = Path(folder) / COMMAND_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    new = [f"$ hesskit {shlex.join(argv)}"] + ([f"  model: {model}"] if model else [])
    if new[0] not in lines:
        path.write_text("\n".join([*lines, *new]) + "\n", encoding="utf-8")
    return path


def command_block(folder: Path) -> list[str]:
    """The ``<pre>`` of ``folder/command.txt`` as a one-item list (empty if there is none)."""
    path = Path(folder) / COMMAND_FILE
    if not path.is_file():
        return []
    return [preformatted(path.read_text(encoding="utf-8").rstrip())]
