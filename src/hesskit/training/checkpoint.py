"""What a training run leaves on disk: atomic checkpoints and the run log, for an exact resume.

A checkpoint holds everything the next iteration depends on: the model's ``state_dict``,
the optimizer's ``state_dict`` (for Hessian-free: λ, the CG warm start, counters), the
global torch, NumPy and Python RNG states, the mini-batch sampler's state (its generator,
current permutation and cursor), the iteration count, the counters of the log (wall time,
data passes, products) and the byte length of the log file at that iteration, so that a
resumed run truncates the log there and appends exactly the records an uninterrupted run
would have written.

Writing is atomic (:mod:`hesskit.atomic_write`): a crash at any point leaves either the old
checkpoint or the new one, never a torn file. A checkpoint proves its integrity: the file
ends with the SHA-256 checksum of all its other bytes, checked by :func:`read_checkpoint`
before anything is trusted; :mod:`hesskit.training.checkpoint_checks` then checks that the
content fits the run (entries, shapes, finite values).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hesskit.atomic_write import atomic_writer, write_bytes_atomically
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
RUN_FILES = (LOG_NAME, CHECKPOINT_NAME)
"""The files that make a folder hold a training run (a new run there is refused)."""


def seed_global_generators(seed: int) -> None:
    """Seed torch's, NumPy's and Python's global generators from a run's ``seed`` (NumPy's
    takes the seed modulo 2³², the most its legacy seeding accepts)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


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


CHECKSUM_MARK = b"\nhesskit-checkpoint-sha256 "
"""A checkpoint file is ``torch.save(state)`` followed by this mark, the 64 hexadecimal
digits of the SHA-256 of those bytes and a newline, so that every byte is checked. A file
that ends with a zip directory instead (``torch.save`` alone) is a checkpoint from before
checksums."""
_TRAILER_LENGTH = len(CHECKSUM_MARK) + 64 + 1
_ZIP_END = b"PK\x05\x06"
_READ_REMEDY = ("restore it from a copy, or start a new run with another --out "
                "(or --overwrite, which moves this run aside)")


@dataclass(frozen=True)
class CheckpointFile:
    """What :func:`read_checkpoint` found: the state, and whether a checksum proved it."""

    state: dict[str, Any]
    checksum_verified: bool


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically, followed by the SHA-256 of its bytes
    (:data:`CHECKSUM_MARK`). If writing fails, any previous checkpoint at ``path`` is left
    exactly as it was."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    with atomic_writer(path) as stream:
        stream.write(payload)
        stream.write(CHECKSUM_MARK + digest + b"\n")
    return Path(path)


def read_checkpoint(path: Path) -> CheckpointFile:
    """Read a checkpoint and prove it is the file hesskit wrote (SHA-256 of every byte).

    A checkpoint from before checksums (``torch.save`` alone) is returned with
    ``checksum_verified=False``; its content is then only as good as the schema check
    (:mod:`hesskit.training.checkpoint_checks`) makes it. Nothing is written.

    Raises:
        DataError: the file is missing, empty, truncated, not a checkpoint, or its checksum
            does not match its content.
    """
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise DataError(
            f"no checkpoint at {str(path)!r}; train without --resume first, or pass the --out "
            "folder of the run to resume"
        )
    data = path.read_bytes()
    if not data:
        raise DataError(f"{where} cannot be read (the file is empty); {_READ_REMEDY}")
    if data[-22:-18] == _ZIP_END:  # torch.save alone: written before checksums
        return CheckpointFile(_torch_load(data, where), checksum_verified=False)
    payload, trailer = data[:-_TRAILER_LENGTH], data[-_TRAILER_LENGTH:]
    if not (trailer.startswith(CHECKSUM_MARK) and trailer.endswith(b"\n")):
        raise DataError(f"{where} cannot be read (truncated, damaged or not a checkpoint: "
                        f"it does not end with its checksum line); {_READ_REMEDY}")
    recorded = trailer[len(CHECKSUM_MARK):-1]
    if hashlib.sha256(payload).hexdigest().encode() != recorded:
        raise DataError(f"{where} is damaged: its content does not match its SHA-256 "
                        f"checksum; {_READ_REMEDY}")
    return CheckpointFile(_torch_load(payload, where), checksum_verified=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state of the checkpoint at ``path`` (see :func:`read_checkpoint`)."""
    return read_checkpoint(path).state


def _torch_load(data: bytes, where: str) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise DataError(f"{where} cannot be read (truncated or not a checkpoint: "
                        f"{type(error).__name__}); {_READ_REMEDY}") from None


def _python_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


class RunLog:
    """The append-only JSON-lines run log, mirrored in memory (``records`` and its bytes).

    Every line is flushed as it is written; :meth:`sync` makes the file durable (fsync) and
    is called before every checkpoint, so that a checkpoint never refers to log lines that a
    power cut could lose. A checkpoint stores the log's byte :meth:`size` and, compressed,
    the log itself (:meth:`snapshot`); :meth:`resume` cuts the file back to that size,
    dropping records written after the checkpoint (they will be written again), and
    rebuilds the file from the snapshot when it is missing, shorter than the checkpoint
    expects or differs from it. With ``folder=None`` the log lives in memory only.
    """

    def __init__(self, folder: Path | None, header: RunHeader) -> None:
        self.path = None if folder is None else Path(folder) / LOG_NAME
        self.header = header
        self.records: list[IterationRecord] = []
        self._written = bytearray()

    def start(self, first: IterationRecord) -> None:
        header = {"kind": "header", **to_json_dict(self.header), "version": SCHEMA_VERSION}
        data = (json.dumps(header, allow_nan=False) + "\n").encode()
        self._written = bytearray(data)
        if self.path is not None:
            write_bytes_atomically(self.path, data)
        self.append(first)

    def resume(self, size: int, snapshot: torch.Tensor | None = None) -> str | None:
        """Restore the log as it was at a checkpoint; return a one-line note when the file had
        to be rebuilt from ``snapshot`` (the checkpoint's copy), else ``None``.

        Raises:
            DataError: the file is missing, too short or damaged and there is no snapshot
                (a checkpoint from before snapshots) to rebuild it from.
        """
        expected = None if snapshot is None else unpack_log(snapshot)
        on_disk = self.path.read_bytes() if self.path.is_file() else None
        problem = _log_problem(on_disk, size, expected)
        if problem is None:
            if len(on_disk) > size:
                with self.path.open("r+b") as stream:
                    stream.truncate(size)  # only ever shortens: never pads with NUL bytes
            self._load(on_disk[:size])
            return None
        if expected is None:
            raise DataError(
                f"{str(self.path)!r} {problem}, and the checkpoint holds no copy of the log "
                "to rebuild it from; restore the log, or train again without --resume"
            )
        self._load(expected)
        write_bytes_atomically(self.path, expected)
        return (f"{str(self.path)!r} {problem}; rebuilt it from the checkpoint "
                f"({len(self.records)} iteration records)")

    def _load(self, data: bytes) -> None:
        try:
            lines = data.decode().splitlines()
            validate_log_line(json.loads(lines[0]))
            records = [validate_log_line(json.loads(line)) for line in lines[1:]]
        except (UnicodeDecodeError, ValueError, IndexError) as error:
            raise DataError(
                f"the run log at the checkpoint cannot be read ({type(error).__name__}); "
                "train again without --resume"
            ) from None
        self.records = records
        self._written = bytearray(data)

    def append(self, record: IterationRecord) -> None:
        self.records.append(record)
        line = json.dumps({"kind": "iteration", **to_json_dict(record)}, allow_nan=False)
        data = (line + "\n").encode()
        self._written.extend(data)
        if self.path is not None:
            with self.path.open("ab") as stream:
                stream.write(data)
                stream.flush()

    def sync(self) -> None:
        """Make every line written so far durable on disk (``os.fsync``)."""
        if self.path is not None and self.path.is_file():
            with self.path.open("rb") as stream:
                os.fsync(stream.fileno())

    def size(self) -> int:
        """Bytes written to the log so far."""
        return len(self._written)

    def snapshot(self) -> torch.Tensor:
        """The log so far, zlib-compressed, as a uint8 tensor (what a checkpoint stores)."""
        return pack_log(bytes(self._written))


def read_log_records(folder: Path, size: int,
                     snapshot: torch.Tensor | None = None) -> list[IterationRecord]:
    """The records of the run log at a checkpoint, read without writing (for the ranks other
    than 0): from the checkpoint's copy when it has one, else the first ``size`` bytes of the
    file in ``folder``."""
    if snapshot is not None:
        data = unpack_log(snapshot)
    else:
        with (Path(folder) / LOG_NAME).open("rb") as stream:
            data = stream.read(size)
    return [validate_log_line(json.loads(line)) for line in data.splitlines()[1:]]


def pack_log(data: bytes) -> torch.Tensor:
    """``data`` compressed into a uint8 tensor (tensors load with ``weights_only=True``)."""
    packed = zlib.compress(data, level=6)
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8).clone()


def unpack_log(packed: torch.Tensor) -> bytes:
    """Undo :func:`pack_log`.

    Raises:
        DataError: the checkpoint's copy of the log cannot be decompressed.
    """
    try:
        return zlib.decompress(packed.numpy().tobytes())
    except zlib.error:
        raise DataError(
            "the checkpoint's copy of the run log is damaged; train again without --resume"
        ) from None


def _log_problem(on_disk: bytes | None, size: int, expected: bytes | None) -> str | None:
    """What is wrong with the log file for a resume at ``size`` bytes, or ``None``."""
    if on_disk is None:
        return "is missing"
    if len(on_disk) < size:
        return f"is shorter than the checkpoint expects ({len(on_disk)} of {size} bytes)"
    prefix = on_disk[:size]
    if expected is not None:
        if prefix != expected:
            pairs = enumerate(zip(prefix, expected, strict=False))
            differing = (i for i, (a, b) in pairs if a != b)
            first = next(differing, min(len(prefix), len(expected)))
            line = prefix[:first].count(b"\n") + 1
            return f"differs from the checkpoint's copy from line {line} on"
        return None
    try:
        lines = prefix.decode().splitlines()
        validate_log_line(json.loads(lines[0]))  # the header
        for line in lines[1:]:
            validate_log_line(json.loads(line))
    except (UnicodeDecodeError, ValueError, IndexError, KeyError, TypeError, DataError):
        return "is damaged (a line is not a valid log record)"
    return None
