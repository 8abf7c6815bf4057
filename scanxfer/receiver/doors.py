"""Doors: one listening socket each, and how a connection accepted there is served.

The receiver's main loop holds a list of doors and knows nothing of what they speak: it
watches each door's `listener`, calls `accept` when it is readable, `tick` about once a
second, `update` on reload, and `stop` then `wait` at shutdown, all from its one thread.
`Door` holds what every door shares: the non-blocking listener, one thread per connection,
the reaping of finished ones and max_connections.  A door says only what is its own:

- `serve`: the `Connection` object that serves an accepted socket (in a thread of its own);
- `turn_away`: what a connection over max_connections is told before it is closed;
- `screen` (optional): which peers are closed at once, before they cost a thread;
- `update` and `tick` (optional, calling the base): settings and housekeeping of its own.

The scanxfer protocol's door is `protocol_door.ProtocolDoor`, the prototype senders' door
`prototype_door.PrototypeDoor`; another way in (another wire format) is a third subclass.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from abc import ABC, abstractmethod
from typing import ClassVar, Generic, Protocol, TypeVar

from ..config import Address, ReceiverConfig

# How long shutdown waits for each connection to end; one that is stuck is left to die with
# the process (its thread is a daemon).
JOIN_SECONDS = 30.0
WARNING_SECONDS = 60.0
# Addresses whose warnings are counted one by one; beyond that they share one count.
WARNING_KEYS = 1024


class Connection(Protocol):
    """One accepted connection, as its door sees it."""

    def run(self) -> None:
        """Serve the connection until it ends, then close it; runs in a thread of its own."""
        ...

    def stop(self) -> None:
        """The receiver is stopping: end soon.  Called from the main thread."""
        ...

    def reconfigure(self, config: ReceiverConfig) -> None:
        """Settings reloaded: the admission limits apply from the next file on.

        A sender keeps its connection for days, so limits that reached only new connections
        would never reach it.  Called from the main thread.
        """
        ...


C = TypeVar("C", bound=Connection)


class Door(ABC, Generic[C]):
    """A listening socket and the connections accepted on it, each in its own thread."""

    # What the door is called in log lines, and the prefix of its connections' thread names.
    label: ClassVar[str]
    thread_prefix: ClassVar[str]

    def __init__(
        self, address: Address, config: ReceiverConfig, backlog: int, logger: logging.Logger
    ) -> None:
        self.config = config
        self.listener = listen(address, backlog)
        # Non-blocking: a peer gone between the select and the accept must not hang the loop.
        self.listener.setblocking(False)
        self.address = Address(*self.listener.getsockname()[:2])  # the real port, if 0 was asked
        self.warnings = RateLimitedWarning(WARNING_SECONDS, WARNING_KEYS, logger)
        self._connections: dict[threading.Thread, C] = {}

    @property
    def connections(self) -> list[C]:
        """The connections being served, as of the last reap."""
        return list(self._connections.values())

    def accept(self) -> None:
        """Take one pending connection: serve it in a thread, or close it."""
        try:
            sock, address = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as error:  # out of file descriptors, say: the next accept may work
            self.warnings.warn("accept", f"{self.label}: cannot accept a connection: %s", error)
            return
        host = address[0]
        peer = str(Address(host, address[1]))
        if not self.screen(host, peer):
            sock.close()
            return
        self.reap()
        if len(self._connections) >= self.config.max_connections:
            self.turn_away(sock, host, peer, len(self._connections))
            return
        connection = self.serve(sock, host, peer)
        thread = threading.Thread(
            target=connection.run, name=f"{self.thread_prefix} {peer}", daemon=True
        )
        self._connections[thread] = connection
        thread.start()

    def update(self, config: ReceiverConfig) -> None:
        """New settings: for connections accepted from now on, and the open ones' limits."""
        self.config = config
        for connection in self.connections:
            connection.reconfigure(config)

    def tick(self) -> None:
        """Housekeeping, about once a second: forget the connections that have ended."""
        self.reap()

    def reap(self) -> None:
        for thread in [t for t in self._connections if not t.is_alive()]:
            del self._connections[thread]

    def stop(self) -> None:
        """Stop accepting, and ask every open connection to end; returns at once."""
        self.listener.close()
        for connection in self._connections.values():
            connection.stop()

    def wait(self, timeout: float = JOIN_SECONDS) -> None:
        """Wait for the connections to end, up to `timeout` for each."""
        for thread in list(self._connections):
            thread.join(timeout=timeout)
        self.reap()

    def close(self) -> None:
        """`stop`, then `wait`: for a door used alone."""
        self.stop()
        self.wait()

    def screen(self, host: str, peer: str) -> bool:
        """Whether to go on with a connection from `host`; if not, it is closed at once."""
        return True

    @abstractmethod
    def serve(self, sock: socket.socket, host: str, peer: str) -> C:
        """The connection that will serve `sock` (`run` starts in its thread next)."""

    @abstractmethod
    def turn_away(self, sock: socket.socket, host: str, peer: str, count: int) -> None:
        """Close `sock`, already `count` connections (max_connections) being served."""


def listen(address: Address, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    return socket.create_server((address.host, address.port), family=family, backlog=backlog)


class RateLimitedWarning:
    """At most one warning per key per period, with a count of the ones held back.

    A scanner or a misconfigured sender retrying in a loop must not flood the journal.
    """

    def __init__(self, period: float, max_keys: int, logger: logging.Logger) -> None:
        self._period, self._max_keys, self._log = period, max_keys, logger
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last logged, held back since)

    def warn(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if key not in self._seen and len(self._seen) >= self._max_keys:
            self._forget_before(now - self._period)
            if len(self._seen) >= self._max_keys:
                key = "(other addresses)"
        last, held_back = self._seen.get(key, (-math.inf, 0))
        if now - last < self._period:
            self._seen[key] = (last, held_back + 1)
            return
        self._seen[key] = (now, 0)
        if held_back:
            message += f" ({held_back} more like this in the last minute)"
        self._log.warning(message, *args)

    def _forget_before(self, cutoff: float) -> None:
        for key in [key for key, (last, _) in self._seen.items() if last < cutoff]:
            del self._seen[key]
