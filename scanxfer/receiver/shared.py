"""State shared by the receiver's connection threads: counters, live senders, services."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Protocol

from ..sizes import counted, human_size
from ..store import Store
from .admission import Reservations
from .after_store import AfterStore
from .gate import Gate

log = logging.getLogger("scanxfer.receiver")


class Handler(Protocol):
    """What the registry needs of a connection."""

    peer: str

    def abort(self) -> None: ...


@dataclass
class Stats:
    """Counters shown in `systemctl status` (STATUS=) and the exit log line."""

    files: int = 0
    bytes: int = 0
    last_file: str = ""
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stored(self, path: str, size: int) -> None:
        with self.lock:
            self.files += 1
            self.bytes += size
            self.last_file = path

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
