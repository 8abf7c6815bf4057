"""Instrument-like writers of .npy scans, each run as a process of its own.

`python -m tests.integration.writers KIND PATH [options]` writes a scan of `--rows` x `--cols`
little-endian uint16 whose data comes from `--seed`, the way one kind of instrument software
does.  The sender's check for writers is about *other* processes holding a file open for writing
or mapped writable, so a test must never write the scan from its own process.

KIND        how the scan comes to be
pieces      header, then the rows in `--pieces` writes `--pause` s apart, through one open fd
prealloc    header, ftruncate to the full size, then the rows in `--pieces` writes (default 2)
memmap      numpy.lib.format.open_memmap: the full size at once, rows filled through the mapping
append      header in one open/close, then each piece opened in append mode, written, closed
rewrite     an existing scan truncated in place, then written again like `pieces`
tmp-rename  written like `pieces` to `--temp` (default PATH.tmp) beside PATH, closed, left
            complete for `--pause` s, then renamed to PATH
inplace     an existing scan of the same shape overwritten in place, its mtime put back

Progress goes to stdout, one line each, flushed, so a test can act at the right moment instead
of sleeping blindly:
  ready         (with --hold start) waiting for a line on stdin before touching the file
  started       the file exists (or was opened, or truncated) and the writing has begun
  halfway       half the data (or a little more) is in the file; with --hold half it now
                waits for a line on stdin instead of pausing
  done SHA256   the file is finished and closed; SHA256 is that of its final bytes
  lost WHY      the file was deleted, moved or replaced while this writer still had it: exit 2

The "lost" check runs while the writer still holds the file (before its last close), so a
sender that hands the finished file off at once cannot make it report a false loss.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

KINDS = ("pieces", "prealloc", "memmap", "append", "rewrite", "tmp-rename", "inplace")
DTYPE = np.dtype("<u2")
EXIT_LOST = 2
READ_CHUNK = 1 << 20


class Lost(Exception):
    """The path no longer names the file this writer was writing."""


def header_bytes(rows: int, cols: int) -> bytes:
    """The .npy 1.0 header numpy itself writes for this shape (open_memmap writes the same)."""
    buffer = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(DTYPE), "fortran_order": False}
    npy_format.write_array_header_1_0(buffer, {**header, "shape": (rows, cols)})
    return buffer.getvalue()


def scan_data(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**16, size=(rows, cols), dtype=DTYPE)


def say(line: str) -> None:
    print(line, flush=True)


class Writer:
    """One writing session: the plan (content, pieces, pauses, holds) and the checks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.path: Path = args.path
        self.header = header_bytes(args.rows, args.cols)
        self.data = scan_data(args.rows, args.cols, args.seed)
        self.pieces: int = args.pieces or (2 if args.kind in ("prealloc", "rewrite") else 3)
        self.pause: float = args.pause
        self.holds: set[str] = set(args.hold or ())
        self.temporary = self.path.with_name(args.temp or f"{self.path.name}.tmp")
        self.expected = hashlib.sha256(self.header + self.data.tobytes()).hexdigest()

    def row_slices(self) -> list[slice]:
        """The rows cut into `pieces` runs; "halfway" is announced after the middle one."""
        bounds = np.linspace(0, len(self.data), self.pieces + 1).round().astype(int)
        return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def between(self, index: int) -> None:
        """After piece `index`: announce halfway when half the rows are in, then pause."""
        slices = self.row_slices()
        if index == len(slices) - 1:
            return
        half = len(self.data) // 2
        if slices[index].stop >= half and (index == 0 or slices[index - 1].stop < half):
            say("halfway")
            if "half" in self.holds:
                sys.stdin.readline()
                return
        time.sleep(self.pause)

    def write_rows(self, fd: int, offset: int) -> None:
        """Write the rows piece by piece at `offset` onwards (the data part of the file)."""
        row_bytes = self.data.shape[1] * DTYPE.itemsize
        for index, rows in enumerate(self.row_slices()):
            chunk = self.data[rows].tobytes()
            written = os.pwrite(fd, chunk, offset + rows.start * row_bytes)
            assert written == len(chunk), "short write"
            self.between(index)

    def finish(self, fd: int, path: Path | None = None) -> str:
        """Check that `path` still names the file open as `fd`, and that it holds what was
        written; returns the SHA-256 of its bytes.  Call it before the last close."""
        check_still_there(path or self.path, fd)
        digest = sha256_of_fd(fd)
        if digest != self.expected:
            raise SystemExit(f"writer bug or foreign write: {digest} != {self.expected}")
        return digest

    # -- the kinds

    def pieces_(self) -> str:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            say("started")
            os.write(fd, self.header)
            self.write_rows(fd, len(self.header))
            return self.finish(fd)
        finally:
            os.close(fd)

    def prealloc(self) -> str:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            say("started")
            os.write(fd, self.header)
            os.ftruncate(fd, len(self.header) + self.data.nbytes)
            self.write_rows(fd, len(self.header))
            return self.finish(fd)
        finally:
            os.close(fd)

    def memmap(self) -> str:
        array = npy_format.open_memmap(self.path, mode="w+", dtype=DTYPE, shape=self.data.shape)
        # numpy closes its own fd once the file is mapped; this one only serves the checks.
        witness = os.open(self.path, os.O_RDONLY)
        try:
            say("started")
            for index, rows in enumerate(self.row_slices()):
                array[rows] = self.data[rows]  # through the mapping: no write(), no inotify event
                self.between(index)
            array.flush()
            digest = self.finish(witness)
            del array  # unmaps: from here on nobody has the file mapped writable
            return digest
        finally:
            os.close(witness)

    def append(self) -> str:
        with self.path.open("xb") as handle:
            handle.write(self.header)
            inode = os.fstat(handle.fileno()).st_ino
        say("started")
        time.sleep(self.pause)
        slices = self.row_slices()
        for index, rows in enumerate(slices):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND)  # never O_CREAT: no new file
            except FileNotFoundError as error:
                raise Lost(f"{self.path} is gone between two frames") from error
            try:
                if os.fstat(fd).st_ino != inode:
                    raise Lost(f"{self.path} is another file than the one this writer created")
                os.write(fd, self.data[rows].tobytes())
                if index == len(slices) - 1:
                    return self.finish(fd)
            finally:
                os.close(fd)
            self.between(index)
        raise AssertionError("no frames")

    def rewrite(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDWR)  # the existing scan, never a new file
        except FileNotFoundError as error:
            raise Lost(f"{self.path} is gone before the rewrite") from error
        try:
            os.ftruncate(fd, 0)
            say("started")
            os.pwrite(fd, self.header, 0)
            self.write_rows(fd, len(self.header))
            return self.finish(fd)
        finally:
            os.close(fd)

    def tmp_rename(self) -> str:
        fd = os.open(self.temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            say("started")
            os.write(fd, self.header)
            self.write_rows(fd, len(self.header))
            digest = self.finish(fd, self.temporary)
            witness = os.open(self.temporary, os.O_RDONLY)  # read-only: holds no writer's place
        finally:
            os.close(fd)
        try:
            # Complete and closed, it waits under its temporary name (as while a checksum is
            # made): only the ignore list or the patterns keep a sender off it now.
            time.sleep(self.pause)
            check_still_there(self.temporary, witness)
            os.rename(self.temporary, self.path)
        finally:
            os.close(witness)
        return digest

    def inplace(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError as error:
            raise Lost(f"{self.path} is gone before the change") from error
        try:
            before = os.fstat(fd)
            if before.st_size != len(self.header) + self.data.nbytes:
                raise SystemExit(f"{self.path} has {before.st_size} bytes, not this shape's")
            if os.pread(fd, len(self.header), 0) != self.header:
                raise SystemExit(f"{self.path} has another header than this shape's")
            say("started")
            self.write_rows(fd, len(self.header))
            # As `cp -p` or `rsync -t` leave it: same size, same mtime, only ctime moved on.
            os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
            return self.finish(fd)
        finally:
            os.close(fd)


def check_still_there(path: Path, fd: int) -> None:
    """Raise Lost unless `path` names the very inode open as `fd`, and that inode is linked."""
    mine = os.fstat(fd)
    if mine.st_nlink == 0:
        raise Lost(f"{path} was deleted under its writer (what it wrote went to an unlinked file)")
    try:
        current = os.lstat(path)
    except FileNotFoundError as error:
        raise Lost(f"{path} was moved away under its writer") from error
    if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
        raise Lost(f"{path} names another file than the one its writer has")


def sha256_of_fd(fd: int) -> str:
    hasher, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, READ_CHUNK, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.hexdigest()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.writers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="content seed (default 0)")
    parser.add_argument("--rows", type=int, default=512, help="rows (default 512)")
    parser.add_argument("--cols", type=int, default=2048, help="uint16 per row (default 2048)")
    parser.add_argument("--pieces", type=int, default=0, help="writes of rows (default 3, or 2)")
    parser.add_argument("--pause", type=float, default=1.0, help="s between pieces (default 1)")
    parser.add_argument("--temp", help="tmp-rename: the temporary file's name (default PATH.tmp)")
    parser.add_argument(
        "--hold",
        action="append",
        choices=("start", "half"),
        help="wait for a line on stdin before starting / at halfway instead of pausing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    writer = Writer(args)
    if "start" in writer.holds:
        say("ready")
        sys.stdin.readline()
    kinds = {
        "pieces": writer.pieces_,
        "prealloc": writer.prealloc,
        "memmap": writer.memmap,
        "append": writer.append,
        "rewrite": writer.rewrite,
        "tmp-rename": writer.tmp_rename,
        "inplace": writer.inplace,
    }
    try:
        digest = kinds[args.kind]()
    except Lost as lost:
        say(f"lost {lost}")
        return EXIT_LOST
    say(f"done {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
