"""Check that transferred scans are byte-identical to the originals.

Everything is streamed (1 MiB reads, memory-mapped arrays compared in blocks), so verifying a
1 GiB scan or a tree of thousands of files needs only a few MiB of memory.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from scanxfer.errors import ExitCode
from scanxfer.npy import NumpyMissing
from scanxfer.watcher import scan

# The Debian package only recommends numpy (the receiver does not need it): without it this
# command says what to install instead of failing with a traceback.
try:
    import numpy as np
except ImportError as missing:
    raise NumpyMissing("verify") from missing

_READ_SIZE = 1 << 20
_ARRAY_BLOCK_BYTES = 16 << 20
_LIST_LIMIT = 20  # longest list of missing or different files printed


@dataclass(frozen=True)
class FileComparison:
    """Result of comparing two files; ``identical`` means same size and same SHA-256."""

    a: Path
    b: Path
    a_size: int
    b_size: int
    a_sha256: str
    b_sha256: str
    arrays_equal: bool | None  # None: not both .npy, or not loadable (see note)
    note: str
    identical: bool


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while block := fp.read(_READ_SIZE):
            digest.update(block)
    return digest.hexdigest()


def compare_files(a: Path, b: Path) -> FileComparison:
    """Compare size, SHA-256 and (for two .npy files) array contents; OSError if unreadable."""
    sizes = a.stat().st_size, b.stat().st_size
    digests = sha256_file(a), sha256_file(b)
    arrays_equal, note = _compare_arrays(a, b)
    identical = sizes[0] == sizes[1] and digests[0] == digests[1]
    return FileComparison(a, b, *sizes, *digests, arrays_equal, note, identical)


def _compare_arrays(a: Path, b: Path) -> tuple[bool | None, str]:
    if a.suffix.lower() != ".npy" or b.suffix.lower() != ".npy":
        return None, "not .npy files: compared bytes only"
    try:
        x = np.load(a, mmap_mode="r", allow_pickle=False)
        y = np.load(b, mmap_mode="r", allow_pickle=False)
        return _arrays_equal(x, y), ""
    except (OSError, ValueError, EOFError, TypeError) as exc:
        return None, f"not loadable as arrays ({exc})"


def _arrays_equal(x: np.ndarray, y: np.ndarray) -> bool:
    """numpy.array_equal, computed block by block so the temporary mask stays small.

    NaNs compare equal when both sides are floating point: a bit-identical copy of data holding
    NaN must not be reported as different.
    """
    if x.shape != y.shape:
        return False
    equal_nan = x.dtype.kind in "fc" and y.dtype.kind in "fc"
    if x.ndim == 0 or x.size == 0:
        return bool(np.array_equal(x, y, equal_nan=equal_nan))
    if x.flags.f_contiguous and not x.flags.c_contiguous:
        # Walk Fortran-ordered data along its slowest axis, so each block is contiguous on disk.
        x, y = np.moveaxis(x, -1, 0), np.moveaxis(y, -1, 0)
    rows = max(1, _ARRAY_BLOCK_BYTES // max(1, x.nbytes // x.shape[0]))
    return all(
        np.array_equal(x[i : i + rows], y[i : i + rows], equal_nan=equal_nan)
        for i in range(0, x.shape[0], rows)
    )


def _print_comparison(c: FileComparison, out: TextIO) -> None:
    for label, path, size, digest in (
        ("A", c.a, c.a_size, c.a_sha256),
        ("B", c.b, c.b_size, c.b_sha256),
    ):
        print(f"{label}: {path}\n   size:   {size} bytes\n   sha256: {digest}", file=out)
    if c.arrays_equal is None:
        print(f"arrays: not compared ({c.note})", file=out)
    else:
        print(f"arrays: {'equal' if c.arrays_equal else 'DIFFERENT'}", file=out)
    if c.identical:
        print("result: IDENTICAL", file=out)
    else:
        reason = "sizes differ" if c.a_size != c.b_size else "contents differ"
        print(f"result: DIFFERENT ({reason})", file=out)


def verify_pair(a: Path, b: Path, out: TextIO) -> int:
    """Print a comparison report for two files; 0 if byte-identical, 1 otherwise."""
    for path in (a, b):
        if not path.is_file():
            print(f"verify: {path} does not exist or is not a file; check the path", file=out)
            return ExitCode.FAILED
    try:
        comparison = compare_files(a, b)
    except OSError as exc:
        print(f"verify: cannot read {exc.filename}: {exc.strerror}", file=out)
        return ExitCode.FAILED
    _print_comparison(comparison, out)
    return ExitCode.OK if comparison.identical else ExitCode.FAILED


def _newest_npy(directory: Path, out: TextIO) -> Path | None:
    if not directory.is_dir():
        print(f"verify: directory {directory} does not exist; check the path", file=out)
        return None
    found = scan(directory, ["*.npy"], [".*"])
    if not found:
        print(f"verify: no .npy files under {directory}", file=out)
        return None
    return directory / found[-1]


def verify_latest(scans: Path, incoming: Path, out: TextIO) -> int:
    """Compare the newest .npy under ``scans`` with the newest under ``incoming``."""
    a = _newest_npy(scans, out)
    b = _newest_npy(incoming, out)
    if a is None or b is None:
        return ExitCode.FAILED
    return verify_pair(a, b, out)


def _copy_problem(src: Path, dst: Path) -> str | None:
    """None if ``dst`` is a byte-identical copy of ``src``, else "missing" or a reason."""
    try:
        dst_stat = dst.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if not stat.S_ISREG(dst_stat.st_mode):
        return "not a regular file"
    try:
        src_size = src.stat().st_size
        if src_size != dst_stat.st_size:
            return f"size {src_size} != {dst_stat.st_size}"
        return None if _same_bytes(src, dst) else "contents differ"
    except OSError as exc:
        return f"cannot read: {exc.strerror}"


def _same_bytes(a: Path, b: Path) -> bool:
    """Chunked byte comparison: cheaper than two digests and stops at the first difference."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block = fa.read(_READ_SIZE)
            if block != fb.read(_READ_SIZE):
                return False
            if not block:
                return True


def _print_listing(label: str, items: list[tuple[PurePosixPath, str]], out: TextIO) -> None:
    for rel, reason in items[:_LIST_LIMIT]:
        print(f"{label} {rel}" + (f" ({reason})" if reason != "missing" else ""), file=out)
    if len(items) > _LIST_LIMIT:
        print(f"... and {len(items) - _LIST_LIMIT} more {label.strip().lower()}", file=out)


def verify_trees(source: Path, dest: Path, out: TextIO) -> int:
    """Every non-hidden file under ``source`` must have an identical copy at the same place in
    ``dest``. Extra files in ``dest`` are counted but allowed (other senders may share it).
    Returns 0 only if at least one file was verified and none is missing or different.
    """
    for role, directory in (("source", source), ("destination", dest)):
        if not directory.is_dir():
            print(f"verify: {role} directory {directory} does not exist; check the path", file=out)
            return ExitCode.FAILED
    files = sorted(scan(source, ["*"], [".*"]))
    if not files:
        print(f"verify: no files under {source}; nothing was verified", file=out)
        return ExitCode.FAILED
    missing: list[tuple[PurePosixPath, str]] = []
    different: list[tuple[PurePosixPath, str]] = []
    for rel in files:
        problem = _copy_problem(source / rel, dest / rel)
        if problem is not None:
            (missing if problem == "missing" else different).append((rel, problem))
    extra = len(set(scan(dest, ["*"], [".*"])) - set(files))
    _print_listing("MISSING  ", missing, out)
    _print_listing("DIFFERENT", different, out)
    identical = len(files) - len(missing) - len(different)
    print(
        f"{identical} files identical, {len(missing)} missing, {len(different)} different", file=out
    )
    if extra:
        print(
            f"{extra} files only in {dest} (not checked; other senders may have sent them)",
            file=out,
        )
    ok = not missing and not different
    print(f"result: {'OK' if ok else 'FAILED'}", file=out)
    return ExitCode.OK if ok else ExitCode.FAILED
