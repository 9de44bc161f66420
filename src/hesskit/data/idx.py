"""Reading and writing IDX files, the format of the MNIST distribution, with strict checks.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4·d bytes   the d sizes, big-endian uint32
    the data    prod(sizes) elements, big-endian, C order

so the "magic number" read as a big-endian int32 is ``type · 256 + d``: 2051 for MNIST
images (uint8, 3-D) and 2049 for MNIST labels (uint8, 1-D). Files may be gzip-compressed
(the original distribution is); compression is detected from the content, not the name.

Written by hand rather than taken from torchvision (not a dependency) so that every way a
file can be wrong becomes a :class:`~hesskit.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from hesskit.atomic_write import write_bytes_atomically
from hesskit.errors import DataError, InvalidArgumentError

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
_REMEDY = "replace it with a fresh copy of the original file"


def idx_magic(dtype: np.dtype | type, ndim: int) -> int:
    """The magic number of an IDX file holding ``ndim``-dimensional data of ``dtype``."""
    code = _type_code(np.dtype(dtype))
    return code * 256 + ndim


def read_idx(path: str | Path, *, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a native-endian numpy array.

    Args:
        path: the file.
        expected_magic: if given, the file's magic number must equal it (2051 for MNIST
            images, 2049 for labels).

    Returns:
        An array of the shape in the header, in native byte order (a writable copy).

    Raises:
        DataError: the file is missing, not gzip despite a ``.gz`` name, a damaged gzip
            stream, not IDX, of the wrong kind, or shorter or longer than its header says.
    """
    path = Path(path)
    content = _read_content(path)
    if len(content) < 4 or content[0:2] != b"\x00\x00":
        raise DataError(f"{path} is not an IDX file (bad magic number); {_REMEDY}")
    code, ndim = content[2], content[3]
    magic = code * 256 + ndim
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{path} has magic number {magic} but {expected_magic} was expected; "
            f"check that it is the right file (images vs labels) or {_REMEDY}"
        )
    if code not in IDX_TYPES or ndim == 0:
        raise DataError(f"{path} has an unknown IDX magic number {magic}; {_REMEDY}")
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(f"{path} is truncated inside its IDX header; {_REMEDY}")
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected_size = header_size + math.prod(shape) * dtype.itemsize
    if len(content) < expected_size:
        raise DataError(
            f"{path} is truncated: its header promises {expected_size} bytes "
            f"(shape {shape}) but it holds {len(content)}; {_REMEDY}"
        )
    if len(content) > expected_size:
        raise DataError(
            f"{path} has {len(content) - expected_size} bytes after the data its header "
            f"describes (shape {shape}); {_REMEDY}"
        )
    data = np.frombuffer(content, dtype, count=math.prod(shape), offset=header_size)
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``compress``, default: name ends .gz).

    The inverse of :func:`read_idx`: ``read_idx(p)`` returns an equal array. Used by the
    tests to make small valid and deliberately broken files.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _type_code(array.dtype)
    big_endian = array.astype(IDX_TYPES[code], copy=False)
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    content = header + np.ascontiguousarray(big_endian).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    write_bytes_atomically(path, gzip.compress(content, mtime=0) if compress else content)


def _type_code(dtype: np.dtype) -> int:
    for code, idx_dtype in IDX_TYPES.items():
        if idx_dtype.kind == dtype.kind and idx_dtype.itemsize == dtype.itemsize:
            return code
    raise InvalidArgumentError(
        f"IDX files cannot hold {dtype}; use uint8, int8, int16, int32, float32 or float64"
    )


def _read_content(path: Path) -> bytes:
    """The decompressed bytes of ``path``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the file name and directory") from None
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror}); check its permissions") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path} is a damaged gzip file ({error}); {_REMEDY}") from None
    if path.suffix == ".gz":
        raise DataError(f"{path} is named .gz but is not gzip-compressed; {_REMEDY}")
    return raw
