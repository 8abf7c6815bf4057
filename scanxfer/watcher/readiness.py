"""Is a scan complete right now?  One verdict for the watcher, the sender and `status`.

A file is complete only when all of these hold at one moment: it is a regular file, no
process on this machine has it open for writing or mapped writable (`writers`), a .npy has
exactly the size its header promises (`npy`), and it did not change while it was checked.
Quiet time is the watcher's business: it calls this once a file has been quiet long enough,
and the sender calls it again right before a file is sent.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..npy import npy_complete
from .scan import Version
from .writers import WriterCheck, WriterState, check_writers

log = logging.getLogger("scanxfer.watcher")

# Each reason why writers cannot be seen is worth one warning, not one per file.
_unseen_reported: set[str] = set()


class Condition(enum.Enum):
    READY = "ready"
    GONE = "gone"  # or not a regular file
    UNREADABLE = "unreadable"
    WRITING = "writing"  # a process holds it open for writing or mapped writable
    INCOMPLETE = "incomplete"  # fewer (or more) bytes than its .npy header promises
    CHANGING = "changing"  # it changed while it was checked


@dataclass(frozen=True)
class Readiness:
    """The verdict on one file, its version, and what to tell a person ("" when ready)."""

    condition: Condition
    version: Version | None  # None when GONE
    reason: str = ""
    writers: WriterCheck | None = None

    @property
    def ready(self) -> bool:
        return self.condition is Condition.READY


def assess(path: Path) -> Readiness:
    """Check `path` now; never raises for a vanished or unreadable file, it says so."""
    before = _lstat_regular(path)
    if before is None:
        return Readiness(Condition.GONE, None, "gone, or not a regular file")
    version = Version.of(before)
    try:
        writers = check_writers(path)
    except FileNotFoundError:
        return Readiness(Condition.GONE, None, "gone")
    except OSError as error:
        reason = f"cannot be read: {error.strerror or error}"
        return Readiness(Condition.UNREADABLE, version, reason)
    if writers.state is WriterState.BUSY:
        who = writers.detail or "another program"
        return Readiness(Condition.WRITING, version, f"still open for writing by {who}", writers)
    if writers.state is WriterState.UNKNOWN:
        _warn_unseen(path, writers)
    if not npy_complete(path):
        reason = f"not a complete .npy file yet (size {version.size})"
        return Readiness(Condition.INCOMPLETE, version, reason, writers)
    after = _lstat_regular(path)
    if after is None or Version.of(after) != version:
        return Readiness(Condition.CHANGING, version, "changed while it was checked", writers)
    return Readiness(Condition.READY, version, "", writers)


def _warn_unseen(path: Path, writers: WriterCheck) -> None:
    if writers.detail not in _unseen_reported:
        _unseen_reported.add(writers.detail)
        log.warning(
            "cannot tell whether a program still writes %s (%s); only settle_seconds and the "
            ".npy header say when such files are complete",
            path,
            writers.detail,
        )


def _lstat_regular(path: Path) -> os.stat_result | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None
