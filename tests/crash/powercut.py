"""A power-cut file system for the crash tests: FUSE passthrough that can lose what was not durable.

``python -m tests.crash.powercut ROOT MOUNTPOINT [--strace FIFO] [--freeze-at N]
[--freeze-on OP]`` mounts ROOT/live at MOUNTPOINT.  Every request is applied to ROOT/live at
once, and `model.DurableModel` keeps what would survive a power cut.  Commands on stdin,
answers on stdout:

* ``freeze``: handle no more requests (answers ``frozen``); ``--freeze-at N`` does the same by
  itself on the N-th request, before handling it (answers ``frozen before OPERATION``), so a
  cut can land on any operation of the program under test; with ``--freeze-on OP`` on the N-th
  request of that operation (``link``, ``rename``, ``fsyncdir``...);
* ``cut``: the power cut: ROOT/live becomes the tree the model says survives (answers ``cut``),
  and the daemon exits, leaving a dead mount for the caller to unmount;
* ``count``: how many requests were handled so far; ``syncs``: how many syncfs and sync calls
  strace reported.

What the kernel tells a FUSE daemon (measured on Linux 6.18, libfuse 3.14, without
writeback_cache, so every write reaches the daemon before write(2) returns):

* fsync(2) arrives as FUSE_FSYNC, fdatasync(2) as FUSE_FSYNC with datasync=1, and fsync of a
  directory as FUSE_FSYNCDIR;
* syncfs(2) and sync(2) arrive as nothing at all: the kernel sends FUSE_SYNCFS only for
  virtiofs (``fc->sync_fs``), and both calls still return 0.

So syncfs, which the receiver's group commit relies on, is seen another way: the program under
test runs under ``strace -f -qq -e trace=syncfs,sync -e signal=none -o FIFO``, and before each
request the daemon drains that FIFO (without blocking) and makes everything durable for each
successful call.  This keeps the order: strace writes the line when the call returns, before the
traced thread goes on, so every request that thread makes afterwards finds the line already in
the FIFO.  A request another thread makes while the syncfs is in progress may be counted as
synced although a real syncfs might have missed it: the one way this model is more generous
than the disk.  The FIFO is drained once more at the cut, for a call that returned just before.
(One FIFO serves one traced program at a time: strace opens it for writing at its start.)

The model is conservative the other way round too: nothing that was not made durable survives,
whereas a real file system writes back on its own after a few seconds.  States where a later,
unsynced operation persisted and an earlier one did not are not produced.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mfusepy

from .model import DurableModel

F = TypeVar("F", bound=Callable[..., Any])

# A syncfs or sync that succeeded, whole or resumed after another thread's line
# ("123 syncfs(5) = 0", "123 <... syncfs resumed>) = 0").
_SYNCED = re.compile(r"(?:\bsyncfs\(|\bsync\(|<\.\.\. (?:syncfs|sync) resumed>).*\)\s+= 0\s*$")
_STAT_KEYS = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_ino", "st_blocks")


def _entry_attrs(st: os.stat_result) -> dict[str, int]:
    return {"st_mode": st.st_mode, "st_ino": st.st_ino}


def request(method: F) -> F:
    """One FUSE request: counted, serialised with the control thread, after the strace news."""

    @functools.wraps(method)
    def handle(self: PowerCutFS, *args: Any) -> Any:
        with self.serial:
            self.count += 1
            if self.freeze_on in ("", method.__name__):
                self.counted += 1
            if self.counted == self.freeze_at:
                self.frozen = True
                self.announce(f"frozen before {method.__name__}")
                threading.Event().wait()  # holds the lock until the cut ends the process
            self.drain_strace()
            return method(self, *args)

    return handle  # type: ignore[return-value]


class PowerCutFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True
    # No lock operation: the kernel keeps POSIX and flock locks itself (SQLite needs them).
    lock = None

    def __init__(
        self, root: Path, strace_fifo: Path | None, freeze_at: int, freeze_on: str
    ) -> None:
        self.root = root
        self.live = root / "live"
        self.model = DurableModel(self.live, root / "shadow")
        self.serial = threading.Lock()
        self.count = 0
        self.freeze_at, self.freeze_on = freeze_at, freeze_on
        self.counted = 0  # requests of operation freeze_on (all if "")
        self.frozen = False
        self.syncs = 0  # syncfs and sync calls seen through strace
        self._strace_fd = os.open(strace_fifo, os.O_RDONLY | os.O_NONBLOCK) if strace_fifo else None
        self._strace_tail = b""

    def announce(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def drain_strace(self) -> None:
        if self._strace_fd is None:
            return
        while True:
            try:
                chunk = os.read(self._strace_fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return  # no writer (yet, or any more)
            *lines, self._strace_tail = (self._strace_tail + chunk).split(b"\n")
            synced = sum(bool(_SYNCED.search(line.decode(errors="replace"))) for line in lines)
            if synced:
                self.syncs += synced
                self.model.all_synced()

    def cut(self) -> None:
        """The power cut: replace the live tree by what the model says survives."""
        self.drain_strace()
        survivor, dead = self.root / "survivor", self.root / "dead"
        self.model.rebuild(survivor)
        self.live.rename(dead)
        survivor.rename(self.live)
        shutil.rmtree(dead)
        shutil.rmtree(self.model.shadow)

    def _path(self, path: str) -> Path:
        return self.live / path.lstrip("/")

    # --- reading -------------------------------------------------------------------------------

    @request
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._path(path))
        attrs = {key: getattr(st, key) for key in _STAT_KEYS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    @request
    def access(self, path: str, amode: int) -> int:
        if not os.access(self._path(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    @request
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino each entry needs its inode number: readdir(3) skips those of inode 0.
        directory = self._path(path)
        names = [".", "..", *os.listdir(directory)]
        return [(name, _entry_attrs(os.lstat(directory / name)), 0) for name in names]

    @request
    def opendir(self, path: str) -> int:
        return 0

    @request
    def releasedir(self, path: str, fh: int) -> int:
        return 0

    @request
    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.live)
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {key: getattr(st, key) for key in (*keys, "f_flag", "f_frsize", "f_namemax")}

    @request
    def open(self, path: str, flags: int) -> int:
        if flags & os.O_TRUNC:
            self.model.file_changes(self._path(path))
        return os.open(self._path(path), flags & ~os.O_CREAT)

    @request
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    @request
    def flush(self, path: str, fh: int) -> int:
        return 0

    @request
    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    # --- changes to files ----------------------------------------------------------------------

    @request
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        target = self._path(path)
        existed = os.path.lexists(target)
        if existed:
            self.model.file_changes(target)
        else:
            self.model.dir_changes(target.parent)
        fd = os.open(target, os.O_RDWR | os.O_CREAT, mode)
        if not existed:
            self.model.created_file(target)
        return fd

    @request
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self.model.fd_changes(fh)
        return os.pwrite(fh, data, offset)

    @request
    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if fh is not None:
            self.model.fd_changes(fh)
            os.ftruncate(fh, length)
        else:
            self.model.file_changes(self._path(path))
            os.truncate(self._path(path), length)
        return 0

    @request
    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        self.model.fd_changes(fh)
        os.posix_fallocate(fh, offset, size)
        return 0

    @request
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self.model.file_changes(self._path(path))
        os.utime(self._path(path), ns=times, follow_symlinks=False)
        return 0

    @request
    def chmod(self, path: str, mode: int) -> int:
        self.model.file_changes(self._path(path))
        os.chmod(self._path(path), mode)
        return 0

    @request
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        os.fsync(fh)
        self.model.file_synced(fh)
        return 0

    # --- changes to directories ----------------------------------------------------------------

    @request
    def mkdir(self, path: str, mode: int) -> int:
        target = self._path(path)
        self.model.dir_changes(target.parent)
        os.mkdir(target, mode)
        self.model.created_dir(target)
        return 0

    @request
    def rmdir(self, path: str) -> int:
        target = self._path(path)
        self.model.dir_changes(target.parent)
        self.model.name_goes(target)
        os.rmdir(target)
        return 0

    @request
    def unlink(self, path: str) -> int:
        target = self._path(path)
        self.model.dir_changes(target.parent)
        self.model.name_goes(target)
        os.unlink(target)
        return 0

    @request
    def link(self, target: str, source: str) -> int:
        new = self._path(target)
        self.model.dir_changes(new.parent)
        os.link(self._path(source), new)
        return 0

    @request
    def rename(self, old: str, new: str) -> int:
        source, target = self._path(old), self._path(new)
        self.model.dir_changes(source.parent)
        self.model.dir_changes(target.parent)
        if os.path.lexists(target):
            self.model.name_goes(target)
        os.rename(source, target)
        self.model.renamed(source, target)
        return 0

    @request
    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self.model.dir_synced(self._path(path))
        return 0


def _control(fs: PowerCutFS) -> None:
    """Commands from the test, one a line on stdin (see the module docstring)."""
    for line in sys.stdin:
        command = line.strip()
        if command == "freeze":
            _freeze(fs)
        elif command == "cut":
            fs.cut()
            fs.announce("cut")
            os._exit(0)
        elif command == "count":
            fs.announce(str(fs.count))
        elif command == "syncs":
            fs.announce(str(fs.syncs))


def _freeze(fs: PowerCutFS) -> None:
    """Take the request lock for good (the cut follows), unless a request froze it first."""
    while not fs.serial.acquire(timeout=0.1):
        if fs.frozen:
            return  # that request has answered "frozen" already
    fs.frozen = True
    fs.announce("frozen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--strace", type=Path)
    parser.add_argument("--freeze-at", type=int, default=0)
    parser.add_argument("--freeze-on", default="")
    args = parser.parse_args()
    fs = PowerCutFS(args.root, args.strace, args.freeze_at, args.freeze_on)
    threading.Thread(target=_control, args=(fs,), daemon=True).start()
    fs.announce("ready")
    # nothreads: one request at a time, in the order the kernel sent them.
    # hard_remove: no .fuse_hidden files for unlinked open files in the live tree.
    mfusepy.FUSE(
        fs,
        str(args.mountpoint),
        foreground=True,
        nothreads=True,
        hard_remove=True,
        use_ino=True,
        default_permissions=True,
    )


if __name__ == "__main__":
    main()
