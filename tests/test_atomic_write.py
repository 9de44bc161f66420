"""``hesskit.atomic_write``: the one way hesskit writes a file, and that it is the only one."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import hesskit
from hesskit.atomic_write import atomic_writer, write_bytes_atomically, write_text_atomically


def test_a_failure_inside_the_block_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text_atomically(tmp_path / "result.json", "old\n")
    with pytest.raises(RuntimeError), atomic_writer(path) as stream:
        stream.write(b"half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["result.json"]


def test_a_failing_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = write_bytes_atomically(tmp_path / "log.jsonl", b"old")

    def crash(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomically(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["log.jsonl"]


def test_no_other_module_renames_or_writes_files_directly():
    """One helper for the whole package: nothing else calls os.replace, mkstemp,
    write_text / write_bytes or savefig on a path, or opens a file for writing."""
    package = Path(hesskit.__file__).parent
    pattern = re.compile(r"os\.replace|os\.rename|mkstemp|\.write_text\(|\.write_bytes\(|"
                         r"\.savefig\(path|open\([^)]*[\"']w")
    offenders = []
    for source in package.rglob("*.py"):
        if source.name == "atomic_write.py":
            continue
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if pattern.search(line) and "probe" not in line:
                offenders.append(f"{source.relative_to(package)}:{number}: {line.strip()}")
    assert offenders == []
