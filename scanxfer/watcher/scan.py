"""Which files under the watched directory are scans, found without following symlinks.

The sender's startup backlog, the watcher's sweeps and `verify` all go through `scan` or
`walk`, so they agree on which files count.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

# The layer's one logger, whichever of its modules speaks.
log = logging.getLogger("scanxfer.watcher")

ErrorHandler = Callable[[OSError], None]


def ignored(name: str, ignore: Sequence[str]) -> bool:
    """True if this one path component (a file or directory name) matches an ignore rule."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in ignore)


def matches(relpath: PurePosixPath, patterns: Sequence[str], ignore: Sequence[str]) -> bool:
    """True if the file name matches a pattern and no path component matches an ignore rule.

    Ignore rules apply to directories too, so ``.*`` also hides everything below ``.cache/``.
    """
    if any(ignored(part, ignore) for part in relpath.parts):
        return False
    return any(fnmatch.fnmatch(relpath.name, pattern) for pattern in patterns)


def log_scan_error(exc: OSError) -> None:
    """The default `ErrorHandler`: a directory we may not read is worth a warning, not a stop."""
    log.warning("cannot read %s (%s); files below it are skipped", exc.filename, exc.strerror)


def require_directory(root: Path) -> None:
    """Raise FileNotFoundError, saying what to do, unless ``root`` is a directory."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"scan directory {root} does not exist or is not a directory; "
            "create it or point the sender at the right directory"
        )


def walk(
    root: Path,
    start: PurePosixPath,
    patterns: Sequence[str],
    ignore: Sequence[str],
    on_error: ErrorHandler,
) -> Iterator[tuple[PurePosixPath, os.stat_result]]:
    """Yield (relative path, lstat) of matching regular files below ``root / start``.

    Never follows symlinks. Entries that vanish mid-scan are skipped silently (an instrument
    may delete or rename files at any time); other errors go to ``on_error``.
    """
    pending = [start]
    while pending:
        reldir = pending.pop()
        try:
            with os.scandir(root / reldir) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            on_error(exc)
            continue
        for entry in entries:
            if ignored(entry.name, ignore):
                continue
            rel = reldir / entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(rel)
                elif entry.is_file(follow_symlinks=False) and any(
                    fnmatch.fnmatch(entry.name, pattern) for pattern in patterns
                ):
                    yield rel, entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                on_error(exc)


def scan(
    root: Path,
    patterns: Sequence[str],
    ignore: Sequence[str],
    on_error: ErrorHandler = log_scan_error,
) -> list[PurePosixPath]:
    """Matching regular files under ``root`` as POSIX relative paths, oldest mtime first.

    Oldest first so that a backlog is delivered in acquisition order. Raises
    FileNotFoundError if ``root`` itself is missing, because that is a configuration error,
    not an empty directory.
    """
    require_directory(root)
    found = list(walk(root, PurePosixPath(), patterns, ignore, on_error))
    found.sort(key=lambda item: (item[1].st_mtime_ns, str(item[0])))
    return [rel for rel, _ in found]


class Version(NamedTuple):
    """One state of a file, as the kernel tells it: a file is handed out once per version.

    Size and mtime alone miss an in-place change whose writer set the mtime back (`cp -p`,
    `rsync -t`, `os.utime`). The ctime moves on every change of content or metadata and no
    user can set it, and the inode tells a file replaced under the same name (write to a
    temporary file, then rename) from the one that was there.
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Version:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
