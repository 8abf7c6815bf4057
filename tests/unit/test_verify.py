"""Tests for scanxfer.verify on real files and trees."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from scanxfer import verify
from scanxfer.verify import compare_files, verify_latest, verify_pair, verify_trees


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=False)
    return path


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def run(func: object, *args: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = func(*args, out)  # type: ignore[operator]
    return code, out.getvalue()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    array = np.random.default_rng(0).random((50, 40))
    a = save(tmp_path / "a" / "scan.npy", array)
    b = tmp_path / "b" / "scan.npy"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    return a, b


# --- compare_files / verify_pair --------------------------------------------------------------


def test_identical(pair: tuple[Path, Path]) -> None:
    c = compare_files(*pair)
    assert c.identical and c.arrays_equal is True
    assert c.a_sha256 == c.b_sha256 and len(c.a_sha256) == 64
    code, text = run(verify_pair, *pair)
    assert code == 0
    assert "IDENTICAL" in text and c.a_sha256 in text and str(pair[1]) in text


def test_different_byte(pair: tuple[Path, Path]) -> None:
    flip_last_byte(pair[1])
    c = compare_files(*pair)
    assert not c.identical and c.arrays_equal is False and c.a_size == c.b_size
    code, text = run(verify_pair, *pair)
    assert code == 1
    assert "DIFFERENT (contents differ)" in text


def test_different_size(pair: tuple[Path, Path]) -> None:
    """Trailing bytes leave the array loadable and equal, but the copy is still not identical."""
    with open(pair[1], "ab") as fp:
        fp.write(b"\0")
    c = compare_files(*pair)
    assert not c.identical and c.b_size == c.a_size + 1 and c.arrays_equal is True
    code, text = run(verify_pair, *pair)
    assert code == 1 and "sizes differ" in text


def test_truncated_copy(pair: tuple[Path, Path]) -> None:
    os.truncate(pair[1], pair[0].stat().st_size - 1)
    c = compare_files(*pair)
    assert not c.identical and c.arrays_equal is None and "not loadable" in c.note
    code, text = run(verify_pair, *pair)
    assert code == 1 and "not compared" in text


def test_missing_file(pair: tuple[Path, Path]) -> None:
    pair[1].unlink()
    code, text = run(verify_pair, *pair)
    assert code == 1
    assert "does not exist" in text and str(pair[1]) in text


def test_non_npy_compares_bytes_only(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"same")
    (tmp_path / "y.bin").write_bytes(b"same")
    c = compare_files(tmp_path / "x.bin", tmp_path / "y.bin")
    assert c.identical and c.arrays_equal is None and "not .npy" in c.note


def test_equal_arrays_in_different_files(tmp_path: Path) -> None:
    """Same values, different layout on disk: bytes differ but arrays are equal."""
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    a = save(tmp_path / "c.npy", array)
    b = save(tmp_path / "f.npy", np.asfortranarray(array))
    c = compare_files(a, b)
    assert c.arrays_equal is True and not c.identical


def test_nan_copies_are_equal(tmp_path: Path) -> None:
    a = save(tmp_path / "a.npy", np.array([1.0, np.nan, 3.0]))
    b = tmp_path / "b.npy"
    shutil.copyfile(a, b)
    assert compare_files(a, b).arrays_equal is True


def test_blockwise_array_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Force many small blocks so a difference in the last block is found by the block loop."""
    monkeypatch.setattr(verify, "_ARRAY_BLOCK_BYTES", 64)
    for order in ("C", "F"):
        array = np.asarray(np.random.default_rng(2).random((30, 20)), order=order)
        a = save(tmp_path / f"{order}a.npy", array)
        changed = array.copy(order=order)
        changed[-1, -1] += 1
        b = save(tmp_path / f"{order}b.npy", changed)
        c_copy = save(tmp_path / f"{order}c.npy", array.copy(order=order))
        assert compare_files(a, b).arrays_equal is False
        assert compare_files(a, c_copy).arrays_equal is True


def test_pickled_npy_is_not_loaded(tmp_path: Path) -> None:
    a = tmp_path / "o.npy"
    np.save(a, np.array([1, None], dtype=object), allow_pickle=True)
    c = compare_files(a, a)
    assert c.identical and c.arrays_equal is None and "not loadable" in c.note


# --- verify_latest -----------------------------------------------------------------------------


def test_latest_picks_newest_by_mtime(tmp_path: Path) -> None:
    scans, incoming = tmp_path / "scans", tmp_path / "incoming"
    old = save(scans / "scan_000009.npy", np.zeros(3))
    new = save(scans / "deep" / "scan_000001.npy", np.ones(3))
    os.utime(old, ns=(10**18, 10**18))
    os.utime(new, ns=(2 * 10**18, 2 * 10**18))
    shutil.copyfile(new, save(incoming / "x" / "got.npy", np.zeros(1)))
    save(incoming / ".partial.npy", np.zeros(7))  # hidden: never considered
    os.utime(incoming / "x" / "got.npy", ns=(10**18, 10**18))
    code, text = run(verify_latest, scans, incoming)
    assert code == 0
    assert "deep/scan_000001.npy" in text and "got.npy" in text


def test_latest_with_empty_or_missing_directory(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    save(scans / "a.npy", np.zeros(3))
    (tmp_path / "empty").mkdir()
    code, text = run(verify_latest, scans, tmp_path / "empty")
    assert code == 1 and "no .npy files" in text
    code, text = run(verify_latest, tmp_path / "absent", scans)
    assert code == 1 and "does not exist" in text


# --- verify_trees ------------------------------------------------------------------------------


def make_tree(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"content of {name} #{i}".encode() * 100)


def test_trees_identical(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, ["a.npy", "run1/b.npy", "run1/deep/c.bin"])
    shutil.copytree(src, dst)
    code, text = run(verify_trees, src, dst)
    assert code == 0
    assert "3 files identical, 0 missing, 0 different" in text


def test_trees_missing_different_extra(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, ["a.npy", "run1/b.npy", "run1/deep/c.npy", "run2/d.npy", ".hidden.npy"])
    shutil.copytree(src, dst)
    (dst / "run2" / "d.npy").unlink()
    flip_last_byte(dst / "run1" / "deep" / "c.npy")
    with open(dst / "a.npy", "ab") as fp:
        fp.write(b"more")
    make_tree(dst, ["other/e.npy", "f.npy"])
    (dst / ".hidden.npy").unlink()  # hidden files are not part of the check
    code, text = run(verify_trees, src, dst)
    assert code == 1
    assert "1 files identical, 1 missing, 2 different" in text
    assert "MISSING   run2/d.npy" in text
    assert "DIFFERENT run1/deep/c.npy (contents differ)" in text
    assert "DIFFERENT a.npy (size" in text
    assert "2 files only in" in text


def test_trees_listing_is_capped(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, [f"s{i:03d}.npy" for i in range(25)])
    dst.mkdir()
    code, text = run(verify_trees, src, dst)
    assert code == 1
    assert text.count("MISSING") == 20
    assert "... and 5 more missing" in text


def test_empty_source_is_not_success(tmp_path: Path) -> None:
    (tmp_path / "src" / ".only-hidden").mkdir(parents=True)
    (tmp_path / "dst").mkdir()
    code, text = run(verify_trees, tmp_path / "src", tmp_path / "dst")
    assert code == 1 and "nothing was verified" in text


def test_missing_destination(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", ["a.npy"])
    code, text = run(verify_trees, tmp_path / "src", tmp_path / "dst")
    assert code == 1 and "does not exist" in text


def test_many_files(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, [f"d{i % 40:02d}/f{i:05d}.npy" for i in range(2500)])
    shutil.copytree(src, dst)
    code, text = run(verify_trees, src, dst)
    assert code == 0 and "2500 files identical" in text
