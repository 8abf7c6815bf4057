"""State shared by the receiver's connection threads: counters, live senders, services."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

from .. import protocol as p
from ..sizes import counted, human_size
from ..store import Store
from ..tally import Histogram
from .admission import Reservations
from .after_store import AfterStore
from .gate import Gate

log = logging.getLogger("scanxfer.receiver")


class Handler(Protocol):
    """What the registry needs of a connection."""

    peer: str

    def abort(self) -> None: ...


# The name files from the prototype door are counted under: it has no sender names, and
# no sender's name can hold parentheses.
PROTOTYPE_SENDER = "(prototype)"
# Files the status page lists under "recent files".
RECENT_FILES = 20
# Group commit (fsync of a batch, rename, fsync of directories): an SD card takes 10-100 ms.
COMMIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class SenderCount:
    """What one sender has delivered since the receiver started, and today."""

    files: int = 0
    bytes: int = 0
    duplicates: int = 0
    kept_beside: int = 0
    last_received: float | None = None  # epoch seconds
    last_file: str = ""
    day: date = field(default_factory=date.today)
    files_today: int = 0
    bytes_today: int = 0

    def add(self, path: str, size: int, now: float) -> None:
        today = date.fromtimestamp(now)
        if today != self.day:
            self.day, self.files_today, self.bytes_today = today, 0, 0
        self.files += 1
        self.bytes += size
        self.files_today += 1
        self.bytes_today += size
        self.last_received, self.last_file = now, path


@dataclass(frozen=True)
class RecentFile:
    at: float  # epoch seconds
    sender: str
    path: str
    size: int


@dataclass
class Stats:
    """Counters shown in `systemctl status` (STATUS=), the exit log line, the metrics and the
    status page.  Plain numbers under one lock: what a file costs whether or not anyone
    scrapes (see `metrics`, which reads them at scrape time)."""

    files: int = 0
    bytes: int = 0
    last_file: str = ""
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    senders: dict[str, SenderCount] = field(default_factory=dict)
    nacks: Counter[str] = field(default_factory=Counter)  # by NackReason, lower case
    recent: deque[RecentFile] = field(default_factory=lambda: deque(maxlen=RECENT_FILES))
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(COMMIT_BUCKETS))
    started: float = field(default_factory=time.time)  # what the counts are counted since

    def stored(
        self, path: str, size: int, sender: str = PROTOTYPE_SENDER, kept_beside: bool = False
    ) -> None:
        """A file newly stored (under its own name, or beside a different file)."""
        now = time.time()
        with self.lock:
            self.files += 1
            self.bytes += size
            self.last_file = path
            count = self._sender(sender)
            count.add(path, size, now)
            count.kept_beside += kept_beside
            self.recent.appendleft(RecentFile(now, sender, path, size))

    def answered(self, sender: str, answer: p.Event) -> None:
        """Count a NACK by its reason, an ACK DUPLICATE for its sender; other events pass."""
        if isinstance(answer, p.Nack):
            with self.lock:
                self.nacks[answer.reason.name.lower()] += 1
        elif isinstance(answer, p.Ack) and answer.outcome is p.Outcome.DUPLICATE:
            with self.lock:
                self._sender(sender).duplicates += 1

    def _sender(self, name: str) -> SenderCount:
        count = self.senders.get(name)
        if count is None:
            count = self.senders[name] = SenderCount()
        return count

    def status_line(self) -> str:
        with self.lock:
            last = f", last {self.last_file}" if self.last_file else ""
            return (
                f"{counted(self.files, 'file')}, {human_size(self.bytes)} received{last}; "
                f"{counted(self.connections, 'connection')}"
            )


SenderKey = tuple[str, bytes]  # (name, instance): one sender process


class SenderRegistry:
    """The live connection of each sender process.

    A sender that reconnects has given up on its previous connection, which may
    still look alive here (a stalled link is silent until idle_timeout) and
    would hold its partials busy.  The new connection takes over: the old one
    is shut down and its partials are released for resume.  Processes are told
    apart by the HELLO's instance option, since several may share a host name.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_sender: dict[SenderKey, Handler] = {}

    def claim(self, sender: SenderKey, handler: Handler) -> None:
        with self._lock:
            previous = self._by_sender.get(sender)
            self._by_sender[sender] = handler
        if previous is not None:
            log.info(
                "%s: sender reconnected; closing its previous connection %s",
                handler.peer,
                previous.peer,
            )
            previous.abort()

    def release(self, sender: SenderKey, handler: Handler) -> None:
        with self._lock:
            if self._by_sender.get(sender) is handler:
                del self._by_sender[sender]


@dataclass
class Services:
    """What every connection thread shares with the server."""

    store: Store
    stats: Stats
    gate: Gate
    registry: SenderRegistry = field(default_factory=SenderRegistry)
    # The free space promised to files in flight, on every door (see admission).
    reservations: Reservations = field(default_factory=Reservations)
    stopping: threading.Event = field(default_factory=threading.Event)
    # Called for each file newly stored, by every door (see after_store); none by default.
    after_store: tuple[AfterStore, ...] = ()


def shut(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    """Make a blocking recv on `sock` in another thread return at once.

    For a TLS socket the plain socket's shutdown is called: SSLSocket.shutdown would
    drop the TLS state under the thread still using it.
    """
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, how)
