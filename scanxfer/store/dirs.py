"""Directory file descriptors under the incoming directory, opened without following symlinks.

Every step below the incoming directory is opened with ``O_NOFOLLOW`` relative to its parent's
descriptor, so a symlink planted there can never make the receiver write outside it.  On the way
to a file about to be acknowledged, each directory's own entry is made durable (`SettledDirs`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import BadName

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class SettledDirs:
    """The directories whose entry in their parent is known durable in this run, by identity.

    A directory found in place is not known durable: another connection may have made it a
    moment ago and not yet fsynced its parent, or a receiver killed between that mkdir and
    that fsync left it.  An ACK for a file inside it must not wait on either, so each
    directory is fsynced into its parent once per run, the first time a file goes below it.
    Shared by all connections; two of them racing on one directory only cost an extra fsync.
    """

    def __init__(self) -> None:
        self._known: set[tuple[int, int]] = set()  # (st_dev, st_ino)

    def settle(self, parent_fd: int, child_fd: int) -> None:
        st = os.fstat(child_fd)
        identity = (st.st_dev, st.st_ino)
        if identity not in self._known:
            os.fsync(parent_fd)
            self._known.add(identity)


@contextmanager
def opened_dir(path: Path) -> Iterator[int]:
    fd = os.open(path, DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def opened_subdir(
    incoming_dir: Path,
    dirs: tuple[str, ...],
    relpath: str,
    create: bool,
    settled: SettledDirs | None = None,
) -> Iterator[int | None]:
    """Yield an fd of incoming/``dirs`` (None if missing and not ``create``).

    With ``settled`` (always with ``create``), each directory on the way is made durable
    in its parent first: the file about to be acknowledged there depends on all of them.
    """
    assert settled is not None or not create  # a directory made must be fsynced in
    fd = os.open(incoming_dir, DIR_FLAGS)
    try:
        for name in dirs:
            child = _open_subdir(fd, name, relpath)
            if child is None and create:
                child = _make_subdir(fd, name, relpath)
            if child is not None and settled is not None:
                _settle(settled, fd, child)
            os.close(fd)
            fd = -1 if child is None else child
            if fd < 0:
                break
        yield fd if fd >= 0 else None
    finally:
        if fd >= 0:
            os.close(fd)


def _open_subdir(parent_fd: int, name: str, relpath: str) -> int | None:
    """Open a subdirectory without following a symlink; None if it does not exist."""
    try:
        return os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
        raise BadName(
            f"cannot store {relpath!r}: {name!r} on the receiver is a "
            f"{'symlink' if stat.S_ISLNK(mode) else 'file'}, not a directory; "
            "rename the file on the sender or remove that entry on the receiver"
        ) from exc


def _settle(settled: SettledDirs, parent_fd: int, child_fd: int) -> None:
    try:
        settled.settle(parent_fd, child_fd)
    except BaseException:
        os.close(child_fd)
        raise


def _make_subdir(parent_fd: int, name: str, relpath: str) -> int:
    """mkdir and open; its caller fsyncs the parent (see `SettledDirs`)."""
    with suppress(FileExistsError):  # another connection made it first: open it below,
        os.mkdir(name, 0o755, dir_fd=parent_fd)  # still without following
    fd = _open_subdir(parent_fd, name, relpath)
    if fd is None:
        raise OSError(errno.ENOENT, f"directory {name!r} vanished while being created")
    return fd
