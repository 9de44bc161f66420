"""Atomic checkpoints of a training run, for an exact resume.

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

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hesskit.errors import DataError

CHECKPOINT_NAME = "checkpoint.pt"


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
