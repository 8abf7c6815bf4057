"""Directory file descriptors under the incoming directory, opened without following symlinks.

Every step below the incoming directory is opened with ``O_NOFOLLOW`` relative to its parent's
descriptor, so a symlink planted there can never make the receiver write outside it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BadName

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@contextmanager
def opened_dir(path: Path) -> Iterator[int]:
    fd = os.open(path, DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def opened_subdir(
    incoming_dir: Path, dirs: tuple[str, ...], relpath: str, create: bool
) -> Iterator[int | None]:
    """Yield an fd of incoming/``dirs`` (None if missing and not ``create``)."""
    fd = os.open(incoming_dir, DIR_FLAGS)
    try:
        for name in dirs:
            child = _open_subdir(fd, name, relpath)
            if child is None and create:
                child = _make_subdir(fd, name, relpath)
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


def _make_subdir(parent_fd: int, name: str, relpath: str) -> int:
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass  # another connection made it first; open it below, still without following
    else:
        os.fsync(parent_fd)
    fd = _open_subdir(parent_fd, name, relpath)
    if fd is None:
        raise OSError(errno.ENOENT, f"directory {name!r} vanished while being created")
    return fd
