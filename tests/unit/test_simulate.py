"""Tests for scanxfer.simulate: real files, loaded back with numpy."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from scanxfer import simulate
from scanxfer.npy import npy_complete


def test_writes_valid_npy_files(tmp_path: Path) -> None:
    out = tmp_path / "new" / "scans"
    paths = simulate.run(out, count=3, interval=0, shape=(4, 5), dtype="float32", chunks=3)
    assert [p.name for p in paths] == ["scan_000001.npy", "scan_000002.npy", "scan_000003.npy"]
    arrays = [np.load(p, allow_pickle=False) for p in paths]
    for array in arrays:
        assert array.shape == (4, 5)
        assert array.dtype == np.float32
        assert not np.isnan(array).any()
    assert not np.array_equal(arrays[0], arrays[1])  # random, not a constant pattern


@pytest.mark.parametrize("dtype", ["bool", "int8", ">u2", "<i8", "float16", ">f8", "complex64"])
def test_dtypes_round_trip(tmp_path: Path, dtype: str) -> None:
    (path,) = simulate.run(tmp_path, count=1, interval=0, shape=(3, 7, 2), dtype=dtype)
    array = np.load(path, allow_pickle=False)
    assert array.dtype == np.dtype(dtype)
    assert array.shape == (3, 7, 2)
    assert npy_complete(path)


def test_numbering_continues_after_highest(tmp_path: Path) -> None:
    (tmp_path / "scan_000007.npy").write_bytes(b"old")
    (tmp_path / "scan_000002.npy").write_bytes(b"old")
    (tmp_path / "scan_99.txt").write_bytes(b"unrelated")
    (tmp_path / "other_000050.npy").write_bytes(b"unrelated")
    paths = simulate.run(tmp_path, count=2, interval=0, shape=(2,), dtype="uint16")
    assert [p.name for p in paths] == ["scan_000008.npy", "scan_000009.npy"]
    assert (tmp_path / "scan_000007.npy").read_bytes() == b"old"


def test_more_chunks_than_elements(tmp_path: Path) -> None:
    (path,) = simulate.run(tmp_path, count=1, interval=0, shape=(2,), dtype="int32", chunks=5)
    assert np.load(path, allow_pickle=False).shape == (2,)


def test_file_grows_progressively_under_final_name(tmp_path: Path) -> None:
    path = tmp_path / "scan_000001.npy"
    sizes: set[int] = set()
    done = threading.Event()

    def observe() -> None:
        while not done.is_set():
            try:
                sizes.add(os.stat(path).st_size)
            except FileNotFoundError:
                continue

    observer = threading.Thread(target=observe)
    observer.start()
    try:
        simulate.run(tmp_path, count=1, interval=1.0, shape=(256, 256), dtype="float64", chunks=4)
    finally:
        done.set()
        observer.join()
    final = path.stat().st_size
    # Seen under its final name while incomplete: an instrument-like writer, not temp + rename.
    assert any(0 < size < final for size in sizes), sizes


def test_logs_one_line_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="scanxfer.simulate"):
        paths = simulate.run(tmp_path, count=2, interval=0, shape=(8,), dtype="uint8")
    lines = [r.getMessage() for r in caplog.records if r.name == "scanxfer.simulate"]
    assert len(lines) == 2
    assert paths[0].name in lines[0]
    assert str(paths[0].stat().st_size) in lines[0]


@pytest.mark.parametrize(
    ("shape", "dtype", "match"),
    [
        ((3,), "object", "pickle"),
        ((3,), "O", "pickle"),
        ((3,), "U8", "not supported"),
        ((3,), "no-such-type", "unknown dtype"),
        ((0, 4), "float32", "dimension"),
        ((4, -1), "float32", "dimension"),
    ],
)
def test_rejects_bad_requests_before_writing(
    tmp_path: Path, shape: tuple[int, ...], dtype: str, match: str
) -> None:
    out = tmp_path / "scans"
    with pytest.raises(ValueError, match=match):
        simulate.run(out, count=1, interval=0, shape=shape, dtype=dtype)
    assert not out.exists()
