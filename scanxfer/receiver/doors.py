"""Doors: one listening socket each, and how a connection accepted there is served.

The receiver's main loop holds a list of doors and knows nothing of what they speak: it
watches each door's `listener`, calls `accept` when it is readable, `tick` about once a
second, `update` on reload, and `stop` then `wait` at shutdown, all from its one thread.
`Door` holds what every door shares: the non-blocking listener, one thread per connection,
the reaping of finished ones, max_connections and the handshake budget.  A door says only
what is its own:

- `serve`: the `Connection` object that serves an accepted socket (in a thread of its own);
- `turn_away`: what a connection over max_connections is told before it is closed;
- `screen` (optional): which peers are closed at once, before they cost a thread;
- `update` and `tick` (optional, calling the base): settings and housekeeping of its own.

The scanxfer protocol's door is `protocol_door.ProtocolDoor`, the prototype senders' door
`prototype_door.PrototypeDoor`; another way in (another wire format) is a third subclass.

max_connections counts only the connections that have finished their handshake (`settled`):
they are the paired senders, and a stranger must never take their place.  The ones still
in their handshake have a budget of their own, per address and in all (`HandshakeBudget`);
past it the oldest of them is dropped, so a new connection always gets its chance to prove
its key, and a flood of idle connections costs its sender only its own earlier ones.  A
connection settles through `Door.settle`, which tells it when the slots are full.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar

from ..config import Address, ReceiverConfig

# How long shutdown waits for each connection to end; one that is stuck is left to die with
# the process (its thread is a daemon).
JOIN_SECONDS = 30.0
WARNING_SECONDS = 60.0
# Addresses whose warnings are counted one by one; beyond that they share one count.
WARNING_KEYS = 1024
# Connections from one address that may be in their handshake at once: a sender needs one
# (a handshake takes milliseconds), a few behind one NAT seldom more than this together.
HANDSHAKES_PER_ADDRESS = 4
# Connections in their handshake at once in all, per slot of max_connections.
HANDSHAKES_PER_SLOT = 2


class Connection(Protocol):
    """One accepted connection, as its door sees it.

    `settled`: past its handshake, holding one of the max_connections slots; read from the
    main thread, set only through `Door.settle`.
    """

    settled: bool

    def run(self) -> None:
        """Serve the connection until it ends, then close it; runs in a thread of its own."""
        ...

    def stop(self) -> None:
        """The receiver is stopping: end soon.  Called from the main thread."""
        ...

    def abort(self) -> None:
        """End now, quietly: dropped while in its handshake, to make room for a newer one."""
        ...

    def reconfigure(self, config: ReceiverConfig) -> None:
        """Settings reloaded: the admission limits apply from the next file on.

        A sender keeps its connection for days, so limits that reached only new connections
        would never reach it.  Called from the main thread.
        """
        ...


C = TypeVar("C", bound=Connection)


@dataclass
class _Entry(Generic[C]):
    """A connection being served, and what its door needs to know of it."""

    connection: C
    host: str
    dropped: bool = False  # aborted to make room; its thread may not have ended yet

    @property
    def in_handshake(self) -> bool:
        return not self.connection.settled and not self.dropped


@dataclass(frozen=True)
class HandshakeBudget:
    """How many connections may be in their handshake at once, per address and in all."""

    per_address: int
    total: int

    @classmethod
    def of(cls, config: ReceiverConfig) -> HandshakeBudget:
        return cls(HANDSHAKES_PER_ADDRESS, HANDSHAKES_PER_SLOT * config.max_connections)


class Door(ABC, Generic[C]):
    """A listening socket and the connections accepted on it, each in its own thread."""

    # What the door is called in log lines, and the prefix of its connections' thread names.
    label: ClassVar[str]
    # The setting that names its address, for the message when it cannot be listened on.
    setting: ClassVar[str]
    thread_prefix: ClassVar[str]

    def __init__(
        self, address: Address, config: ReceiverConfig, backlog: int, logger: logging.Logger
    ) -> None:
        self.config = config
        self.listener = listen(address, backlog, self.setting)
        # Non-blocking: a peer gone between the select and the accept must not hang the loop.
        self.listener.setblocking(False)
        self.address = Address(*self.listener.getsockname()[:2])  # the real port, if 0 was asked
        self.warnings = RateLimitedWarning(WARNING_SECONDS, WARNING_KEYS, logger)
        # In the order accepted, so the first in a handshake is the oldest.  Changed by the
        # main thread; `settle` reads it from connection threads: both under the lock.
        self._connections: dict[threading.Thread, _Entry[C]] = {}
        self._lock = threading.Lock()

    @property
    def connections(self) -> list[C]:
        """The connections being served, as of the last reap."""
        with self._lock:
            return [entry.connection for entry in self._connections.values()]

    def settled_count(self) -> int:
        """Connections past their handshake: the ones max_connections counts."""
        with self._lock:
            return sum(entry.connection.settled for entry in self._connections.values())

    def settle(self, connection: C) -> bool:
        """Mark `connection` past its handshake if a max_connections slot is free; False if
        not (it is then told so and closed), or if it is being dropped already.  Called from
        the connection's thread; under the lock that `_make_room_for_handshake` picks under,
        so a connection is either settled or dropped, never both."""
        with self._lock:
            entries = self._connections.values()
            if any(entry.dropped for entry in entries if entry.connection is connection):
                return False
            settled = sum(entry.connection.settled for entry in entries)
            if settled >= self.config.max_connections:
                return False
            connection.settled = True
            return True

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
        settled = self.settled_count()
        if settled >= self.config.max_connections:
            self.turn_away(sock, host, peer, settled)
            return
        connection = self.serve(sock, host, peer)
        if not connection.settled:
            self._make_room_for_handshake(host, peer)
        thread = threading.Thread(
            target=connection.run, name=f"{self.thread_prefix} {peer}", daemon=True
        )
        with self._lock:
            self._connections[thread] = _Entry(connection, host)
        thread.start()

    def _make_room_for_handshake(self, host: str, peer: str) -> None:
        """Drop the oldest connection still in its handshake where `host` (or everyone)
        has used up the handshake budget; a settled connection is never touched."""
        budget = HandshakeBudget.of(self.config)
        with self._lock:
            waiting = [entry for entry in self._connections.values() if entry.in_handshake]
            same_host = [entry for entry in waiting if entry.host == host]
            if len(same_host) >= budget.per_address:
                oldest = same_host[0]
                what = f"{budget.per_address} from its address"
            elif len(waiting) >= budget.total:
                oldest = waiting[0]
                what = f"{budget.total} in all"
            else:
                return
            oldest.dropped = True
        oldest.connection.abort()
        self.warnings.warn(
            f"handshakes {oldest.host}",
            "%s: dropped the oldest connection from %s that had not finished its handshake: "
            "already %s were waiting for theirs (the handshake budget)",
            peer,
            oldest.host,
            what,
        )

    def update(self, config: ReceiverConfig) -> None:
        """New settings: for connections accepted from now on, and the open ones' limits."""
        self.config = config
        for connection in self.connections:
            connection.reconfigure(config)

    def tick(self) -> None:
        """Housekeeping, about once a second: forget the connections that have ended."""
        self.reap()

    def reap(self) -> None:
        with self._lock:
            for thread in [t for t in self._connections if not t.is_alive()]:
                del self._connections[thread]

    def stop(self) -> None:
        """Stop accepting, and ask every open connection to end; returns at once."""
        self.listener.close()
        for connection in self.connections:
            connection.stop()

    def wait(self, timeout: float = JOIN_SECONDS) -> None:
        """Wait for the connections to end, up to `timeout` for each."""
        with self._lock:
            threads = list(self._connections)
        for thread in threads:
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
        """Close `sock`, already `count` settled connections (max_connections) being served."""


class CannotListen(OSError):
    """A door's address cannot be listened on; str() says why in the user's terms."""

    def __init__(self, address: Address, setting: str, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.message = why_not_listening(address, setting, error)

    def __str__(self) -> str:
        return self.message


def listen(address: Address, backlog: int, setting: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        return socket.create_server(
            (address.host, address.port),
            family=family,
            backlog=backlog,
            dualstack_ipv6=_every_address(address.host),
        )
    except OSError as error:
        raise CannotListen(address, setting, error) from error


def _every_address(host: str) -> bool:
    """Whether `host` is "::", which takes IPv4 as well (as `scanxfer keys add` assumes when
    it puts this host's IPv4 address into a pairing line, and as the metrics endpoint does):
    `socket.create_server` alone would make it IPv6 only."""
    try:
        unspecified = ipaddress.IPv6Address(host).is_unspecified
    except ValueError:
        return False
    return unspecified and socket.has_dualstack_ipv6()


def why_not_listening(address: Address, setting: str, error: OSError) -> str:
    """What a failed bind means and what to change: only EADDRINUSE means another program
    (perhaps another receiver) has the port."""
    cannot = f"cannot listen on {address}"
    if error.errno == errno.EADDRINUSE:
        return (
            f"{cannot}: the port is in use by another program (is another receiver running? "
            f"'ss -ltnp' shows which program has it); stop it, or choose another port in "
            f"'{setting}'"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"{cannot}: no network interface of this machine has the address {address.host}; "
            f"fix '{setting}' in the settings, e.g. ':{address.port}' for all addresses"
        )
    if error.errno == errno.EACCES and 0 < address.port < 1024:
        return (
            f"{cannot}: ports below 1024 are privileged, and this user may not listen on "
            f"them; choose a port from 1024 up in '{setting}', e.g. ':5000'"
        )
    return f"{cannot}: {error.strerror or error}; check '{setting}' in the settings"


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
