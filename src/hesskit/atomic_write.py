"""Atomic file writes: the one way hesskit puts a file on disk.

A file is written under a temporary name in its own folder (``.<name>.<random>.tmp``),
flushed and ``fsync``-ed, then renamed over the final name with ``os.replace``, which is
atomic on POSIX and Windows. A crash, a full disk or an interrupt at any point therefore
leaves either the previous file or the complete new one under the final name, never a torn
file, and the temporary file is removed when writing fails.

Every writer of results, logs, checkpoints, figures and caches goes through
:func:`atomic_writer` or one of its shorthands (:func:`write_bytes_atomically`,
:func:`write_text_atomically`, :func:`save_figure_atomically`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` when the ``with`` block ends normally.

    If the block raises (or the process dies inside it), ``path`` is left exactly as it was
    and the temporary file is removed (a killed process may leave a ``.tmp`` file behind,
    never a damaged ``path``).

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.bin"
    >>> with atomic_writer(target) as stream:
    ...     _ = stream.write(b"complete")
    >>> target.read_bytes()
    b'complete'
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """``path`` replaced by ``data`` in one atomic step (see :func:`atomic_writer`)."""
    with atomic_writer(path) as stream:
        stream.write(data)
    return Path(path)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """``path`` replaced by ``text`` (UTF-8) in one atomic step (see :func:`atomic_writer`)."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def save_figure_atomically(figure: Any, path: str | os.PathLike[str], **options: Any) -> Path:
    """``figure.savefig`` (matplotlib) into ``path`` in one atomic step; the format is the
    file's suffix (``.png`` unless it says otherwise) and ``options`` go to ``savefig``."""
    file_format = Path(path).suffix.lstrip(".") or "png"
    with atomic_writer(path) as stream:
        figure.savefig(stream, format=file_format, **options)
    return Path(path)
