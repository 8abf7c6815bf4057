"""What can go wrong in the store; ``str(e)`` of each is a message that says what to do next.

The receiver maps each class to a NACK reason, so the classes follow what the sender can do about
the problem (rename, wait, retry), not which system call failed.
"""

from __future__ import annotations

import errno

from ..errors import ExitCode, ScanxferError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class StoreError(ScanxferError):
    """Base class; ``str(e)`` is a user-facing message that says what to do."""


class StoreSetupError(StoreError):
    """The configured directories cannot be used: the receiver cannot start."""

    exit_code = ExitCode.STORAGE


class BadName(StoreError):
    """The offered relative path is not acceptable."""


class Busy(StoreError):
    """The same file is being received on another connection right now."""


class NoSpace(StoreError):
    """The disk (or quota) is full."""


class StorageIOError(StoreError):
    """Any other OS error while writing, fsyncing or placing a file."""


class DigestMismatch(StoreError):
    """The bytes received do not have the digest the sender announced."""


# What each lasting cause means on the receiver, and what its admin can do about it; any other
# error is reported as an I/O error of the disk.
_CAUSES = {
    errno.EACCES: (
        "permission denied",
        "the receiver's user must own its storage folders (sudo chown scanxfer: FOLDER)",
    ),
    errno.EROFS: (
        "the disk is read-only",
        "it was mounted read-only (after errors?), or lies outside the service's "
        "ReadWritePaths=; journalctl -k shows the kernel's messages",
    ),
    errno.EXDEV: (
        "the partial and incoming folders are on different filesystems",
        "leave partial_dir unset, so unfinished files are kept inside the incoming folder",
    ),
}
_CAUSES[errno.EPERM] = _CAUSES[errno.EACCES]


def io_error(exc: OSError, action: str) -> StoreError:
    """Translate an OSError into the StoreError the receiver reports to the sender."""
    if exc.errno in _FULL_ERRNOS:
        return NoSpace(f"no space left on the receiver while {action}; free some space there")
    cause, fix = _CAUSES.get(
        exc.errno or 0,
        ("I/O error", "check its disk (journalctl -k shows kernel I/O errors)"),
    )
    return StorageIOError(f"{cause} on the receiver while {action} ({exc.strerror}); {fix}")
