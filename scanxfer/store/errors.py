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

    exit_code = ExitCode.UNREACHABLE


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


def io_error(exc: OSError, action: str) -> StoreError:
    """Translate an OSError into the StoreError the receiver reports to the sender."""
    if exc.errno in _FULL_ERRNOS:
        return NoSpace(f"no space left on the receiver while {action}; free some space there")
    return StorageIOError(
        f"I/O error on the receiver while {action}: {exc}; "
        "check its disk (journalctl -k shows kernel I/O errors)"
    )
