"""The running sender's own account of itself: `<state_dir>/status.json`, kept up to date.

The journal says what was delivered; only the running process knows whether it is connected,
since when it has been retrying and why, and which file it is sending now.  The daemon
writes that here (through `atomic.write`, so a reader never sees half a file) when it
changes, at most about once a second, and at least every `HEARTBEAT_SECONDS` as a sign of
life; `scanxfer status` reads it.  A file whose pid is gone, or that has not been rewritten
for `STALE_SECONDS`, belongs to a sender that is not running, whatever it says.  As lsyncd
does with its status file; docs/status.md describes every field.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import atomic
from .delivery import Delivery
from .ledger import Destination
from .run_state import LinkState

log = logging.getLogger("scanxfer.sender")

STATUS_NAME = "status.json"
# Changes are written at most this often, except a change of the connection's state.
MIN_INTERVAL_SECONDS = 1.0
# Written at least this often even when nothing changes, so a reader can tell it is alive.
HEARTBEAT_SECONDS = 10.0
# Older than this, the file describes a sender that hangs or is gone.
STALE_SECONDS = 60.0


def local_time(epoch: float | None) -> str | None:
    """ISO 8601 in this machine's time zone, with its UTC offset: 2026-11-30T01:02:03+01:00."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


class StatusFile:
    """Writes the daemon's status file for the `Delivery` it is told to follow."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = state_dir / STATUS_NAME
        self.clock = clock
        self.started = time.time()
        self.delivery: Delivery | None = None
        self.destination: Destination | None = None
        self._written: dict[str, Any] | None = None
        self._written_at = float("-inf")
        self._failed = False

    def follow(self, delivery: Delivery, destination: Destination) -> None:
        """Report on `delivery` from now on (a new one follows each reload of the settings)."""
        self.delivery, self.destination = delivery, destination
        self.update()

    def update(self) -> None:
        """Write the status if it changed (throttled) or is due as a sign of life."""
        if self.delivery is None:
            return
        data = self._describe(self.delivery)
        since = self.clock() - self._written_at
        changed = data != self._written
        state_changed = self._written is None or (
            data["connection"]["state"] != self._written["connection"]["state"]
        )
        if (changed and (state_changed or since >= MIN_INTERVAL_SECONDS)) or (
            since >= HEARTBEAT_SECONDS
        ):
            self._write(data)

    def stopped(self) -> None:
        """The last word of a clean exit: not running, at once, without waiting to go stale."""
        if self._written is not None:
            self._write({**self._written, "running": False, "pid": None, "current_file": None})

    def _write(self, data: dict[str, Any]) -> None:
        body = {**data, "updated": local_time(time.time())}
        try:
            atomic.write(self.path, (json.dumps(body, indent=2) + "\n").encode(), mode=0o644)
        except OSError as error:
            # Sending matters more than describing it: say so once, keep delivering.
            if not self._failed:
                log.warning(
                    "cannot write %s (%s); `scanxfer status` will say not running",
                    self.path,
                    error.strerror or error,
                )
            self._failed = True
        else:
            self._failed = False
        self._written, self._written_at = data, self.clock()

    def _describe(self, delivery: Delivery) -> dict[str, Any]:
        assert self.destination is not None
        link = delivery.link
        return {
            "running": True,
            "pid": os.getpid(),
            "started": local_time(self.started),
            "receiver": str(delivery.config.receiver),
            "receiver_identity": self.destination.receiver,
            "watch_dir": self.destination.watch_dir,
            "connection": {
                "state": str(link.state),
                "since": local_time(link.since),
                "last_error": link.last_error,
                "last_error_at": local_time(link.last_error_at),
                "next_attempt": local_time(link.next_attempt)
                if link.state in (LinkState.RETRYING, LinkState.PAUSED)
                else None,
                "failures": link.failures,
            },
            "current_file": _current_file(delivery),
            "queue": {"files": len(delivery.queued), "in_flight": delivery.in_flight},
        }


def _current_file(delivery: Delivery) -> dict[str, Any] | None:
    job = next(iter(delivery.offered.values()), None)
    if job is None:
        return None
    # What the receiver holds of it so far, resumed plus sent; null until its payload begins.
    bytes_done = delivery.progress.under_way.get(job.relpath)
    return {"path": job.relpath, "size": job.size, "bytes_done": bytes_done}


def read(state_dir: Path) -> dict[str, Any] | None:
    """The status a running sender wrote, or None if there is none or it is not running."""
    try:
        data = json.loads((state_dir / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not data.get("running") or not _alive(data.get("pid")):
        return None
    try:
        updated = datetime.fromisoformat(data["updated"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
    return data if time.time() - updated <= STALE_SECONDS else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process has the pid: it exists
    return True
