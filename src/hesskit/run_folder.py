"""A run folder is never overwritten: the check every command runs before it writes results.

A folder *holds a run* when it contains one of the files a command writes there (its
``names``: ``log.jsonl`` and ``checkpoint.pt`` for ``train``; the report for ``bench``; the
measurements for ``precondition``). A new run into such a folder is refused with one line
that names the folder and the ways on; with ``overwrite`` the old run is first moved aside
to a sibling folder ``<name>.old-<UTC time>``, never deleted.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from hesskit.errors import InvalidArgumentError


def run_files_in(folder: str | os.PathLike[str], names: tuple[str, ...]) -> list[str]:
    """The ``names`` (files or sub-folders) that exist in ``folder``, in the given order."""
    folder = Path(folder)
    return [name for name in names if (folder / name).exists()]


def refuse_existing_run(folder: str | os.PathLike[str], names: tuple[str, ...], *,
                        resume_hint: str | None = None) -> None:
    """Raise one :class:`InvalidArgumentError` when ``folder`` holds any of ``names``.

    Args:
        folder: the output folder of the new run.
        names: the files and folders the command writes there.
        resume_hint: how to continue the old run instead (``"--resume"``), if the command
            can; the message names it beside a new ``--out`` and ``--overwrite``.
    """
    found = run_files_in(folder, names)
    if not found:
        return
    ways = [f"continue it with {resume_hint}"] if resume_hint else []
    ways += ["choose a new --out", "pass --overwrite to move it aside"]
    raise InvalidArgumentError(
        f"output folder {str(folder)!r} already holds a run ({', '.join(found)}); "
        f"{', '.join(ways[:-1])} or {ways[-1]}"
    )


def move_run_aside(folder: str | os.PathLike[str]) -> Path:
    """Rename ``folder`` to a free sibling ``<name>.old-<YYYYmmddTHHMMSSZ>[-k]``; return it.

    Raises:
        InvalidArgumentError: the folder cannot be renamed (permissions, a mount point).
    """
    folder = Path(folder).resolve()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = folder.with_name(f"{folder.name}.old-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = folder.with_name(f"{folder.name}.old-{stamp}-{counter}")
    try:
        folder.rename(target)
    except OSError as error:
        raise InvalidArgumentError(
            f"cannot move the old run in {str(folder)!r} aside ({error.strerror}); "
            "choose a new --out instead of --overwrite"
        ) from None
    return target


def prepare_run_folder(folder: str | os.PathLike[str], names: tuple[str, ...], *,
                       overwrite: bool = False, resume: bool = False,
                       resume_hint: str | None = None) -> Path | None:
    """The check before a new run writes into ``folder``; returns where the old run went.

    With ``resume`` nothing is checked (the run continues the one in the folder). With
    ``overwrite`` an old run is moved aside (:func:`move_run_aside`); otherwise it is
    refused (:func:`refuse_existing_run`). Returns the folder the old run was moved to, or
    ``None``.
    """
    if resume or not run_files_in(folder, names):
        return None
    if not overwrite:
        refuse_existing_run(folder, names, resume_hint=resume_hint)
    return move_run_aside(folder)
