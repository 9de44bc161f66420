"""IDX reader/writer: round trips, the header layout by hand, and every broken-file case."""

import gzip
import struct

import numpy as np
import pytest

from hesskit.data.idx import idx_magic, read_idx, write_idx
from hesskit.errors import DataError, InvalidArgumentError


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_write_then_read_returns_the_same_array(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, array)


def test_header_is_the_documented_big_endian_layout(tmp_path):
    write_idx(tmp_path / "x.idx", np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8))
    raw = (tmp_path / "x.idx").read_bytes()
    # Written by hand from the format: 0, 0, type 0x08, 2 dims, sizes 2 and 3, then data.
    assert raw == bytes([0, 0, 8, 2]) + struct.pack(">II", 2, 3) + bytes([1, 2, 3, 4, 5, 6])


def test_mnist_magic_numbers():
    assert idx_magic(np.uint8, 3) == 2051
    assert idx_magic(np.uint8, 1) == 2049


def test_compression_is_detected_from_content_not_name(tmp_path):
    write_idx(tmp_path / "plain-name", np.ones((3, 2), np.uint8), compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-name"), np.ones((3, 2)))


def test_writer_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(InvalidArgumentError, match="IDX files cannot hold"):
        write_idx(tmp_path / "x.idx", np.zeros(3, np.complex64))


def _header(code, dims):
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", r"x\.idx is not an IDX file"),
        (b"\x12\x34\x08\x01" + b"\x00" * 8, r"x\.idx is not an IDX file"),
        (bytes([0, 0, 0x42, 1]) + b"\x00" * 8, r"unknown IDX magic number"),
        (bytes([0, 0, 8, 3, 0, 0]), r"truncated inside its IDX header"),
        (_header(8, (10, 4)) + b"\x00" * 39, r"truncated: its header promises 52 bytes"),
        (_header(8, (2,)) + b"\x00" * 5, r"has 3 bytes after the data"),
    ],
)
def test_broken_files_raise_data_error_naming_the_file(tmp_path, content, pattern):
    (tmp_path / "x.idx").write_bytes(content)
    with pytest.raises(DataError, match=pattern):
        read_idx(tmp_path / "x.idx")


def test_expected_magic_mismatch(tmp_path):
    write_idx(tmp_path / "labels.idx", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"labels\.idx has magic number 2049 but 2051"):
        read_idx(tmp_path / "labels.idx", expected_magic=2051)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.idx does not exist"):
        read_idx(tmp_path / "nothere.idx")


def test_gz_name_without_gzip_content(tmp_path):
    (tmp_path / "x.idx.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=r"x\.idx\.gz is named \.gz but is not gzip-compressed"):
        read_idx(tmp_path / "x.idx.gz")


def test_truncated_gzip_stream(tmp_path):
    packed = gzip.compress(_header(8, (100,)) + bytes(100))
    (tmp_path / "x.idx.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"x\.idx\.gz is a damaged gzip file"):
        read_idx(tmp_path / "x.idx.gz")
