"""When and from where each sender was last seen: <state_dir>/seen.json.

Kept apart from keys.json on purpose: the receiver writes this file as senders come and go,
while keys.json is changed only by an administrator's command, under its lock, and must
never be rewritten behind that command's back.

    {"version": 1,
     "senders": {"lab-pc": {"at": "2026-11-30T09:30:00Z", "address": "192.168.1.50"}}}

The receiver notes a sender at each handshake and, while it stays connected, about once a
second (`SeenLog.saw`, in memory only).  The file is rewritten by one thread (`flush`, from
the main loop's tick): soon after a sender is seen for the first time or from a new address,
otherwise at most every SAVE_INTERVAL seconds, so a busy sender costs the SD card one small
write every few minutes rather than one per connection.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from scanxfer import atomic
from scanxfer.errors import ScanxferError

SEEN_FILE_NAME = "seen.json"
FORMAT_VERSION = 1
# The longest a known sender's time on disk lags behind its last connection.
SAVE_INTERVAL = 300.0

log = logging.getLogger(__name__)


class SeenError(ScanxferError):
    """seen.json cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class Sighting:
    """The last time a sender completed a handshake or was connected, and its address then."""

    at: datetime  # aware, in UTC
    address: str


def seen_path(state_dir: Path) -> Path:
    return state_dir / SEEN_FILE_NAME


def read_seen(path: Path) -> dict[str, Sighting]:
    """The sightings in `path` by sender name; {} if there is no such file yet."""
    try:
        return atomic.read_json(path, _decode, {})
    except PermissionError:
        raise SeenError(atomic.permission_hint(path, path.parent)) from None
    except atomic.Damaged as exc:
        raise SeenError(
            f"{path} is damaged ({exc.problem}); delete it: the receiver starts it afresh, "
            f"and only the last-seen times are lost"
        ) from None


class SeenLog:
    """The running receiver's record of sightings; safe to share between connection threads."""

    def __init__(
        self,
        path: Path,
        interval: float = SAVE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._sightings = self._load()
        self._dirty = False  # changes not yet on disk
        self._urgent = False  # among them, a new sender or a new address
        self._saved_at = -math.inf
        self._failing = False  # a failed write was logged; quiet until one succeeds

    def saw(self, name: str, address: str, at: datetime | None = None) -> None:
        """Note `name` as seen now (or `at`) from `address`; the disk waits for `flush`."""
        sighting = Sighting(at or datetime.now(UTC), address)
        with self._lock:
            before = self._sightings.get(name)
            self._sightings[name] = sighting
            self._dirty = True
            self._urgent |= before is None or before.address != address

    def sightings(self) -> dict[str, Sighting]:
        with self._lock:
            return dict(self._sightings)

    def flush(self, *, force: bool = False) -> bool:
        """Write the file if there is something new and it is due (or `force`); True if written.

        Call from one thread only: the write happens outside the lock, so handshakes never
        wait for the disk.
        """
        with self._lock:
            due = self._urgent or self._clock() - self._saved_at >= self.interval
            if not self._dirty or not (due or force):
                return False
            data = _encode(self._sightings)
            self._dirty = self._urgent = False
            self._saved_at = self._clock()
        try:
            atomic.write(self.path, data, mode=0o600, owner=atomic.state_owner(self.path.parent))
        except OSError as exc:
            with self._lock:
                self._dirty = True  # try again at the next interval
            if not self._failing:
                log.warning("cannot record when senders were last seen in %s: %s", self.path, exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def _load(self) -> dict[str, Sighting]:
        """What the file holds, so a restart keeps senders not seen since; {} if unreadable."""
        try:
            return read_seen(self.path)
        except SeenError as exc:
            log.warning("%s", exc)
        except OSError as exc:
            log.warning("cannot read %s (%s); last-seen times start afresh", self.path, exc)
        return {}


def _decode(document: object) -> dict[str, Sighting]:
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValueError(f'expected a JSON object with "version": {FORMAT_VERSION}')
    senders = document["senders"]
    if not isinstance(senders, dict):
        raise ValueError('"senders" is not an object')
    sightings = {}
    for name, record in senders.items():
        if not isinstance(record, dict):
            raise ValueError(f"the record of {name!r} is not an object")
        at, address = record["at"], record["address"]
        if not isinstance(at, str) or not isinstance(address, str):
            raise ValueError(f"the record of {name!r} is not text")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError(f"the time of {name!r} has no UTC offset")
        sightings[name] = Sighting(when.astimezone(UTC), address)
    return sightings


def _encode(sightings: dict[str, Sighting]) -> bytes:
    senders = {
        name: {"at": sighting.at.strftime("%Y-%m-%dT%H:%M:%SZ"), "address": sighting.address}
        for name, sighting in sorted(sightings.items())
    }
    document = {"version": FORMAT_VERSION, "senders": senders}
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")
