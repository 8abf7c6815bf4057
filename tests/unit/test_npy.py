"""Tests for scanxfer.npy: is a .npy file exactly as long as its own header promises?"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst
from numpy.lib import format as npy_format

from scanxfer.npy import (
    NPY_MAGIC,
    _itemsize,
    _NeedsNumpy,
    _own_itemsize,
    npy_complete,
    npy_expected_size,
)


def save(path: Path, array: np.ndarray, version: tuple[int, int] | None = None) -> int:
    with open(path, "wb") as fp:
        npy_format.write_array(fp, array, version=version)
    return path.stat().st_size


def header_only(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fp:
        npy_format.write_array_header_1_0(fp, npy_format.header_data_from_array_1_0(array))


def test_complete_npy(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    save(path, np.arange(100, dtype=np.float32).reshape(10, 10))
    assert npy_complete(path)


def test_truncated_by_one_byte(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    size = save(path, np.arange(100, dtype=np.int16))
    os.truncate(path, size - 1)
    assert not npy_complete(path)


def test_one_byte_too_many(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    save(path, np.arange(10))
    with open(path, "ab") as fp:
        fp.write(b"\0")
    assert not npy_complete(path)


def test_header_only(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    header_only(path, np.zeros((4, 4)))
    assert not npy_complete(path)


def test_zero_size_array_is_complete_with_header_only(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    save(path, np.zeros((0, 3)))
    assert npy_complete(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x93NUM",
        b"not a numpy file at all, just text" * 10,
        NPY_MAGIC + b"\x01\x00" + struct.pack("<H", 20) + b"{'descr': '<f8', 'sh",
        NPY_MAGIC + b"\x01\x00" + struct.pack("<H", 16) + b"[1, 2, 3]       ",
        NPY_MAGIC + b"\x01\x00" + struct.pack("<H", 16) + b"__import__('os')",
        NPY_MAGIC + b"\x09\x00" + struct.pack("<H", 0),
        NPY_MAGIC + b"\x02\x00" + struct.pack("<I", 2**32 - 1) + b"{",
    ],
    ids=["empty", "short-magic", "text", "cut-header", "not-a-dict", "code", "v9", "huge-len"],
)
def test_garbage_is_not_complete(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "g.npy"
    path.write_bytes(content)
    assert not npy_complete(path)


def test_fortran_order(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    array = np.asfortranarray(np.arange(60, dtype=np.float64).reshape(3, 4, 5))
    size = save(path, array)
    assert b"'fortran_order': True" in path.read_bytes()[:128]
    assert npy_complete(path)
    os.truncate(path, size - 8)
    assert not npy_complete(path)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_header_versions(tmp_path: Path, version: tuple[int, int]) -> None:
    path = tmp_path / "v.npy"
    size = save(path, np.ones((7, 3), dtype=">u2"), version=version)
    assert path.read_bytes()[6:8] == bytes(version)
    assert npy_complete(path)
    os.truncate(path, size - 1)
    assert not npy_complete(path)


def test_object_dtype_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.npy"
    np.save(path, np.array([1, "a", None], dtype=object), allow_pickle=True)
    assert not npy_complete(path)


def test_non_npy_always_complete(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\x93NUMPY garbage")
    assert npy_complete(path)


def test_directory_named_npy_is_not_complete(tmp_path: Path) -> None:
    (tmp_path / "d.npy").mkdir()
    assert not npy_complete(tmp_path / "d.npy")


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=300), major=st.integers(0, 255), minor=st.integers(0, 255))
def test_npy_complete_never_raises(
    tmp_path_factory: pytest.TempPathFactory, tail: bytes, major: int, minor: int
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f.npy"
    path.write_bytes(NPY_MAGIC + bytes([major, minor]) + tail)
    assert npy_complete(path) in (True, False)


@pytest.mark.parametrize(
    "dtype", ["<u2", "|b1", "<f8", ">f4", "<c16", "|u1", "<i8", "<U7", "<M8[ns]", "|V12", "<f2"]
)
def test_item_sizes_match_numpy(dtype: str) -> None:
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    assert _itemsize(descr) == np.dtype(dtype).itemsize


@settings(max_examples=300)
@given(npst.nested_dtypes(subtype_strategy=npst.scalar_dtypes() | npst.byte_string_dtypes()))
def test_sizes_read_without_numpy_agree_with_numpy(dtype: np.dtype) -> None:
    """What the receiver sizes itself (it has no numpy) is what numpy says, or left to numpy."""
    try:
        own = _own_itemsize(npy_format.dtype_to_descr(dtype), depth=0)
    except _NeedsNumpy:
        return
    assert own == dtype.itemsize


@pytest.mark.parametrize(
    "descr",
    [
        [("x", "<i4"), ("y", "<f8", (2, 3)), ("", "|V4")],
        [("a", [("b", [("c", "<U3")])])],
        [("t", "<M8[10ms]"), ("n", "|S0")],
    ],
)
def test_records_are_sized_like_numpy(descr: object) -> None:
    assert _itemsize(descr) == npy_format.descr_to_dtype(descr).itemsize


def test_hostile_nesting_is_refused_without_recursing_away() -> None:
    descr: object = "<f4"
    for _ in range(2000):
        descr = [("a", descr)]
    assert _itemsize(descr) is None


@pytest.mark.parametrize(
    "shape", ["(" + "9" * 4000 + ", " + "9" * 4000 + ")", "(2**62,)", "(3037000500, 3037000500)"]
)
def test_a_shape_no_file_can_hold_is_no_size(tmp_path: Path, shape: str) -> None:
    """Not even a number: a size of 8000 digits could not be printed in a refusal."""
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"
    raw = NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    assert npy_expected_size(io.BytesIO(raw)) is None


def test_the_largest_size_a_file_can_have_is_still_a_size() -> None:
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (9223372036854775000,), }"
    raw = NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    assert npy_expected_size(io.BytesIO(raw)) == 9223372036854775000 + len(raw)


def test_a_field_name_used_twice_is_not_a_dtype() -> None:
    assert _itemsize([("a", "<f4"), ("a", "<i2")]) is None


def test_object_and_invalid_dtypes_have_no_item_size() -> None:
    assert _itemsize("|O") is None
    assert _itemsize("<i16") is None
    assert _itemsize("nonsense") is None


def test_watching_plain_scans_does_not_import_numpy(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((4, 4), dtype=np.uint16))
    script = (
        "import sys; from pathlib import Path; from scanxfer.npy import npy_complete; "
        f"assert npy_complete(Path({str(tmp_path / 'a.npy')!r})); print('numpy' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    "descr",
    [
        "<,7",  # numpy's own descr parser raises SyntaxError on it (found by make fuzz)
        "<i" + "9" * 4400,  # more digits than int() converts
        "\\q",  # an invalid escape: Python warns about it while parsing
    ],
)
def test_garbage_descr_is_incomplete_not_a_crash(
    tmp_path: Path, descr: str, recwarn: pytest.WarningsRecorder
) -> None:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    path = tmp_path / "bad.npy"
    path.write_bytes(NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    assert npy_complete(path) is False
    # Python 3.11 calls an invalid escape a DeprecationWarning, 3.12 a SyntaxWarning.
    assert not [w for w in recwarn if issubclass(w.category, SyntaxWarning | DeprecationWarning)]
