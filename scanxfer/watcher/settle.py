"""SettlePolicy: when each candidate file is judged, and which verdicts hand it out.

The watcher's decisions, kept apart from its I/O and its threads: event sources and sweeps
tell the policy what they saw, the watcher asks it which files are due and passes each one's
`Readiness` back through a judge. Time comes from a `Clock`, so a test can say "events at t,
advance the clock, what is due now" without waiting for real quiet time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

from .readiness import Condition, Readiness
from .scan import Version

log = logging.getLogger("scanxfer.watcher")

# Monotonic seconds: time.monotonic in the daemon, a clock the test moves by hand in tests.
Clock = Callable[[], float]
# The verdict on one due candidate: readiness.assess on the file in the daemon.
Judge = Callable[[PurePosixPath], Readiness]

# A file some process holds open for writing is looked at again this often (or every
# settle_seconds, if longer): its writer's close may raise no event (polling, or a mapping
# released long after its descriptor was closed).
BUSY_RECHECK_SECONDS = 1.0


class SettlePolicy:
    """Decides when each candidate is judged and hands out each version of a file once.

    Three tables, keyed by the path relative to the watched root: ``due`` (candidates and when
    to judge them), ``seen`` (the version at the last look: an event, a sweep or a verdict) and
    ``evaluated`` (the version already judged, which is never judged again). A candidate is
    judged once it has been quiet for ``settle_seconds``: no event for it, and the same version
    as when it was last looked at (writes through a memory map raise no event).

    Thread-safe, because event sources, the watcher's thread and the sender (`reconsider`)
    call it at once. It does no I/O; the judge passed to `settled` does.
    """

    def __init__(
        self,
        settle_seconds: float,
        clock: Clock = time.monotonic,
        unreadable: Callable[[PurePosixPath, Readiness], None] | None = None,
    ) -> None:
        if settle_seconds < 0:
            raise ValueError("settle_seconds must be >= 0")
        self.settle_seconds = settle_seconds
        self._clock = clock
        # Told of each version of a file this user may not read (default: a log line).
        self._unreadable = unreadable or _warn_unreadable
        self._lock = threading.Lock()
        self._due: dict[PurePosixPath, float] = {}
        self._seen: dict[PurePosixPath, Version] = {}
        self._evaluated: dict[PurePosixPath, Version] = {}

    # -- what event sources and sweeps saw

    def touched(self, rel: PurePosixPath, version: Version | None) -> None:
        """An event says ``rel`` is being written: its quiet period starts again.

        ``version`` is the file's version right after the event (None if it could not be
        read); a different one when the file is judged means it changed without an event.
        """
        now = self._clock()
        with self._lock:
            self._due[rel] = now + self.settle_seconds
            if version is not None:
                self._seen[rel] = version

    def forget(self, rel: PurePosixPath) -> None:
        """``rel`` was deleted or moved away: drop it, so the tables do not grow forever."""
        with self._lock:
            self._drop(rel)

    def forget_below(self, directory: PurePosixPath) -> None:
        """``directory`` was deleted or moved away: drop every file below it."""
        with self._lock:
            for table in self._tables():
                for known in [rel for rel in table if directory in rel.parents]:
                    del table[known]

    def rescanned(self, found: Mapping[PurePosixPath, Version]) -> None:
        """Files found by a sweep that covers what events may have missed (inotify's safety
        rescan, a directory that appeared with files in it): each becomes a candidate unless
        it is one already or its version was judged. Pending candidates keep their timers, so
        a rescan never postpones a file."""
        self._merge(found, complete=False)

    def polled(self, found: Mapping[PurePosixPath, Version]) -> None:
        """Every file under the root, found by polling: a changed version restarts the file's
        quiet period as an event would, and a file no longer found is forgotten."""
        self._merge(found, complete=True)

    def reconsider(self, rel: PurePosixPath) -> None:
        """Judge ``rel`` again once it has settled, even if its version was judged before."""
        now = self._clock()
        with self._lock:
            self._evaluated.pop(rel, None)
            self._due[rel] = now + self.settle_seconds

    # -- judging

    def settled(self, judge: Judge) -> list[PurePosixPath]:
        """Judge every candidate whose quiet period is over; the complete ones, oldest mtime
        first (the name breaks ties), each version of a file once."""
        now = self._clock()
        with self._lock:
            due = sorted(rel for rel, when in self._due.items() if when <= now)
            for rel in due:
                del self._due[rel]
        # Judged outside the lock: judging reads the file, and events must not wait for it.
        ready: list[tuple[int, PurePosixPath]] = []
        for rel in due:
            readiness = judge(rel)
            if self._hands_out(rel, readiness):
                assert readiness.version is not None
                ready.append((readiness.version.mtime_ns, rel))
        return [rel for _, rel in sorted(ready)]

    def _hands_out(self, rel: PurePosixPath, readiness: Readiness) -> bool:
        """Record the verdict on a due candidate; True if it is complete and not handed out."""
        version, condition = readiness.version, readiness.condition
        now = self._clock()
        with self._lock:
            if version is None:
                self._drop(rel)
                return False
            if self._seen.get(rel, version) != version or condition is Condition.CHANGING:
                # Changed since it was last looked at, with or without an event: not quiet.
                self._seen[rel] = version
                self._due[rel] = now + self.settle_seconds
                return False
            self._seen[rel] = version
            if self._evaluated.get(rel) == version:
                return False
            if condition is Condition.WRITING:
                # Its writer's close may raise no event: look again, never hand it out now.
                self._due[rel] = now + max(self.settle_seconds, BUSY_RECHECK_SECONDS)
                log.debug("%s is %s", rel, readiness.reason)
                return False
            self._evaluated[rel] = version
        if condition is Condition.READY:
            return True
        if condition is Condition.UNREADABLE:
            self._unreadable(rel, readiness)
        else:
            log.debug("%s is %s", rel, readiness.reason)
        return False

    # -- the tables (callers hold the lock)

    def _merge(self, found: Mapping[PurePosixPath, Version], *, complete: bool) -> None:
        now = self._clock()
        with self._lock:
            for rel, version in found.items():
                changed = complete and self._seen.get(rel) != version
                if changed:
                    self._seen[rel] = version
                fresh = changed or rel not in self._due
                if fresh and self._evaluated.get(rel) != version:
                    self._due[rel] = now + self.settle_seconds
                    self._seen[rel] = version  # to compare with when it is judged
            if complete:
                for gone in self._seen.keys() - found.keys():
                    self._drop(gone)

    def _drop(self, rel: PurePosixPath) -> None:
        for table in self._tables():
            table.pop(rel, None)

    def _tables(self) -> tuple[dict[PurePosixPath, Any], ...]:
        return self._due, self._seen, self._evaluated


def _warn_unreadable(rel: PurePosixPath, readiness: Readiness) -> None:
    log.warning("%s %s; it is sent once the sender may read it", rel, readiness.reason)
