"""Where data lives on disk: the user's data directory and the cache, with atomic writes.

Files the user supplies (the MNIST IDX files, CURVES' ``digs3pts_1.mat``) are looked up in

    the ``data_dir`` argument, else ``$HESSKIT_DATA_DIR``, else ``~/.cache/hesskit/data``

(each loader looks in a sub-directory named for the data set first, e.g. ``mnist/``).

Generated data sets (MNIST-1D, the synthetic CURVES substitute) take a few seconds to
build, so they are stored once as ``.npz`` files in

    ``$HESSKIT_CACHE_DIR`` if set, else ``~/.cache/hesskit``.

Files are written with :func:`hesskit.atomic_write.atomic_writer` (a temporary file in the
same directory, renamed into place), so an interrupted run or two processes
writing at once never leave a half-written file under the final name. A cache file that
cannot be read (for example, from an older format) is rebuilt, never trusted. Nothing is
ever downloaded.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hesskit.atomic_write import atomic_writer
from hesskit.errors import DataError

CACHE_DIR_ENV = "HESSKIT_CACHE_DIR"
DATA_DIR_ENV = "HESSKIT_DATA_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/hesskit")


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    """The directory holding user-supplied data files.

    ``explicit`` if given, else ``$HESSKIT_DATA_DIR``, else ``cache_dir() / "data"``.
    """
    if explicit is not None:
        return Path(explicit).expanduser()
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser() if configured else cache_dir() / "data"


def cache_dir() -> Path:
    """The directory for cached data sets: ``$HESSKIT_CACHE_DIR`` or ``~/.cache/hesskit``.

    The directory is not created here; :func:`write_arrays_atomic` creates it on first use.
    """
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_CACHE_DIR.expanduser()


def write_arrays_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` as an uncompressed ``.npz`` at ``path`` via a temporary file and rename.

    Raises:
        DataError: the directory cannot be created or written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as file:
            np.savez(file, **arrays)
    except OSError as error:
        raise DataError(
            f"cannot write the data cache in {path.parent} ({error.strerror}); "
            f"set {CACHE_DIR_ENV} to a writable directory"
        ) from error


def read_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """Load an ``.npz`` written by :func:`write_arrays_atomic`; ``None`` if absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def cached_arrays(
    filename: str,
    build: Callable[[], dict[str, np.ndarray]],
    *,
    keys: tuple[str, ...],
    use_cache: bool = True,
) -> dict[str, np.ndarray]:
    """The arrays stored under ``cache_dir() / filename``, building and storing them if needed.

    Args:
        filename: file name inside the cache directory; it should encode every parameter
            of ``build`` (seed, sizes, version) so that different data never share a name.
        build: makes the arrays from scratch (deterministically).
        keys: the array names ``build`` returns; a cache file without exactly these is rebuilt.
        use_cache: ``False`` builds without reading or writing the cache.
    """
    if not use_cache:
        return build()
    path = cache_dir() / filename
    arrays = read_arrays(path)
    if arrays is None or set(arrays) != set(keys):
        arrays = build()
        write_arrays_atomic(path, arrays)
    return arrays
