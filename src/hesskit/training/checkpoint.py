"""What a training run leaves on disk: atomic checkpoints and the run log, for an exact resume.

A checkpoint holds everything the next iteration depends on: the model's ``state_dict``,
the optimizer's ``state_dict`` (for Hessian-free: λ, the CG warm start, counters), the
global torch, NumPy and Python RNG states, the mini-batch sampler's state (its generator,
current permutation and cursor), the iteration count, the counters of the log (wall time,
data passes, products) and the byte length of the log file at that iteration, so that a
resumed run truncates the log there and appends exactly the records an uninterrupted run
would have written.

Writing is atomic: the checkpoint goes to a temporary file in the same folder, is flushed
to disk, then ``os.replace`` renames it over the old one. A crash at any point leaves
either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hesskit.errors import DataError
from hesskit.report.schema import (
    SCHEMA_VERSION,
    IterationRecord,
    RunHeader,
    to_json_dict,
    validate_log_line,
)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


def capture_rng_state() -> dict[str, Any]:
    """The global torch, NumPy and Python RNG states, as tensors and plain values."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": _python_state_to_lists(random.getstate()),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`: set the three global generators."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["kind"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["position"],
        numpy_state["has_gauss"],
        numpy_state["cached"],
    ))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    If writing fails, the temporary file is removed and any previous checkpoint at
    ``path`` is left exactly as it was.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only).

    Raises:
        DataError: the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"no checkpoint at {str(path)!r}; train without --resume first, or pass the --out "
            "folder of the run to resume"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise DataError(
            f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}); "
            "delete it and train without --resume"
        ) from None


def _python_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


class RunLog:
    """The append-only JSON-lines run log, mirrored in memory (``records``).

    A checkpoint stores the log's byte ``size()``; :meth:`resume` cuts the file back to it,
    dropping records written after the checkpoint (they will be written again). With
    ``folder=None`` the log lives in memory only.
    """

    def __init__(self, folder: Path | None, header: RunHeader) -> None:
        self.path = None if folder is None else Path(folder) / LOG_NAME
        self.header = header
        self.records: list[IterationRecord] = []

    def start(self, first: IterationRecord) -> None:
        if self.path is not None:
            header = {"kind": "header", **to_json_dict(self.header), "version": SCHEMA_VERSION}
            self.path.write_text(json.dumps(header, allow_nan=False) + "\n")
        self.append(first)

    def resume(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (the checkpoint's iteration) and reload it."""
        with self.path.open("r+b") as stream:
            stream.truncate(size)
        lines = self.path.read_text().splitlines()
        self.records = [validate_log_line(json.loads(line)) for line in lines[1:]]

    def append(self, record: IterationRecord) -> None:
        self.records.append(record)
        if self.path is not None:
            line = json.dumps({"kind": "iteration", **to_json_dict(record)}, allow_nan=False)
            with self.path.open("a") as stream:
                stream.write(line + "\n")

    def size(self) -> int:
        return 0 if self.path is None else self.path.stat().st_size
