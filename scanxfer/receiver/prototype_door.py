"""The prototype door: old prototype senders deliver into this receiver during a migration.

The prototype's wire format is an 8-byte big-endian length, then the file's bytes; no name,
no checksum, no acknowledgement, no authentication.  The door exists only where the
administrator sets ``legacy_listen``, and only addresses in ``legacy_allow`` get past the
accept.  Since nothing on the wire can be checked, what arrives must at least be a whole,
self-consistent .npy file (its header accounts for every byte announced) before it is stored,
and the peer gets no say over how much memory is used or how long a connection may dawdle.

Files are stored like the prototype stored them, as ``scan_<epoch ms>.npy`` at the top of the
incoming directory, with the store's usual durability (fsync, link without overwriting, fsync
of the directory) and clash names.  Each connection runs in its own thread, as the receiver's
own connections do, so an fsync on a slow SD card stalls only its own sender.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import math
import socket
import threading
import time
from collections.abc import Iterable
from typing import Protocol

from ..config import Address, ReceiverConfig
from ..npy import MAX_NPY_HEADER, npy_expected_size
from ..protocol.prototype import LENGTH, decode_length
from ..sizes import human_size
from ..store import PartialFile, Store, StoreError

log = logging.getLogger(__name__)

# A peer must deliver this much payload per idle_timeout, so that a trickle of single bytes
# cannot hold a connection (and a partial file) open for ever.
PROGRESS_BYTES = 64 * 1024
RECV_BUFFER = 1 << 20
# Magic, version, a 4-byte header length and the header itself: everything needed to size a
# .npy file, so the check can be made before the bulk of the payload is written.
NPY_PREFIX = 12 + MAX_NPY_HEADER
REFUSAL_LOG_SECONDS = 60.0
# Addresses whose refusals are counted one by one; beyond that they share one count.
REFUSAL_LOG_ADDRESSES = 1024
JOIN_SECONDS = 30.0


class StatsSink(Protocol):
    """What the door reports stored files to (receiver.Stats)."""

    def stored(self, path: str, size: int) -> None: ...


class _Ended(Exception):
    """The connection ends here; the message (for the log) says why, at ``level``."""

    def __init__(self, message: str, level: int = logging.WARNING) -> None:
        super().__init__(message)
        self.level = level


class LegacyDoor:
    """The listening socket for prototype senders and the threads serving them.

    The receiver's main loop watches ``listener`` and calls ``accept`` when it is readable,
    ``update`` on reload and ``close`` at shutdown; all three run in that one thread.
    """

    def __init__(
        self, config: ReceiverConfig, store: Store, stats: StatsSink, stopping: threading.Event
    ) -> None:
        if config.legacy_listen is None:
            raise ValueError("legacy_listen is not set: the prototype door is off")
        self._config, self._store, self._stats, self._stopping = config, store, stats, stopping
        host, port = config.legacy_listen.host, config.legacy_listen.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, port), family=family, backlog=16)
        # Non-blocking: a peer gone between the select and the accept must not hang the loop.
        self.listener.setblocking(False)
        self.address = Address(*self.listener.getsockname()[:2])
        self._connections: dict[threading.Thread, _LegacyConnection] = {}
        self._refusals = _RateLimitedWarning(REFUSAL_LOG_SECONDS, REFUSAL_LOG_ADDRESSES)
        log.warning(
            "the prototype door at %s is open: UNAUTHENTICATED and UNENCRYPTED, accepting "
            "prototype senders from %s; turn it off (legacy_listen: null) once the senders "
            "are migrated",
            self.address,
            ", ".join(str(network) for network in config.legacy_allow),
        )

    def accept(self) -> None:
        """Take one pending connection: serve it in a thread, or close it with a log line."""
        try:
            sock, address = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as error:  # out of file descriptors, say: the next accept may work
            self._refusals.warn("accept", "prototype door: cannot accept a connection: %s", error)
            return
        host = address[0]
        peer = str(Address(host, address[1]))
        config = self._config
        if not _allowed(host, config.legacy_allow):
            self._refusals.warn(
                host,
                "%s: refused on the prototype door: not in legacy_allow; add its network "
                "there if it is one of your prototype senders",
                peer,
            )
            sock.close()
            return
        self._reap()
        if len(self._connections) >= config.max_connections or self._stopping.is_set():
            self._refusals.warn(
                host,
                "%s: refused on the prototype door: already %d connections (max_connections)",
                peer,
                len(self._connections),
            )
            sock.close()
            return
        connection = _LegacyConnection(sock, peer, self._store, config, self._stats, self._stopping)
        thread = threading.Thread(target=connection.run, name=f"legacy {peer}", daemon=True)
        self._connections[thread] = connection
        thread.start()

    def update(self, config: ReceiverConfig) -> None:
        """New settings (legacy_allow, limits) for connections accepted from now on."""
        self._config = config

    def close(self) -> None:
        """Stop accepting, end the open connections (dropping their partials), wait for them."""
        self.listener.close()
        connections = list(self._connections.items())
        for _, connection in connections:
            connection.abort()
        for thread, _ in connections:
            thread.join(timeout=JOIN_SECONDS)
        self._reap()

    def _reap(self) -> None:
        for thread in [t for t in self._connections if not t.is_alive()]:
            del self._connections[thread]


def _allowed(host: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    address = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 zone
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 peer on a dual-stack socket
    return any(address in network for network in networks)


class _RateLimitedWarning:
    """At most one warning per key per period, with a count of the ones held back.

    A scanner or a misconfigured sender retrying in a loop must not flood the journal.
    """

    def __init__(self, period: float, max_keys: int) -> None:
        self._period, self._max_keys = period, max_keys
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
        log.warning(message, *args)

    def _forget_before(self, cutoff: float) -> None:
        for key in [key for key, (last, _) in self._seen.items() if last < cutoff]:
            del self._seen[key]


class _LegacyConnection:
    """One prototype sender's connection: length, payload, repeated until it closes."""

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        store: Store,
        config: ReceiverConfig,
        stats: StatsSink,
        stopping: threading.Event,
    ) -> None:
        self.sock, self.peer, self.store, self.config = sock, peer, store, config
        self.stats, self.stopping = stats, stopping
        self.aborted = threading.Event()
        self.partial: PartialFile | None = None
        self.buffer = bytearray(RECV_BUFFER)

    def run(self) -> None:
        try:
            self._serve()
        except (_Ended, OSError, StoreError) as error:
            self._log_end(error)
        except Exception:
            # A bug must cost one connection, never the daemon and its other senders.
            log.exception("%s: internal error on the prototype door, closing", self.peer)
        finally:
            if self.partial is not None:
                self.partial.discard()
            self.sock.close()

    def abort(self) -> None:
        """End this connection from another thread: its recv returns, and `run` cleans up."""
        self.aborted.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _ending(self) -> bool:
        return self.aborted.is_set() or self.stopping.is_set()

    def _log_end(self, error: Exception) -> None:
        dropped = "; the file being received was dropped" if self.partial is not None else ""
        if self._ending():
            log.info("%s: prototype connection closed as the receiver stops%s", self.peer, dropped)
        elif isinstance(error, _Ended):
            log.log(error.level, "%s: %s%s", self.peer, error, dropped)
        elif isinstance(error, StoreError):
            log.error("%s: prototype file not stored: %s", self.peer, error)
        else:
            log.warning("%s: prototype connection lost: %s%s", self.peer, error, dropped)

    def _serve(self) -> None:
        # The first length must arrive within handshake_timeout, however it is sliced.
        deadline = time.monotonic() + self.config.handshake_timeout
        limit = "handshake_timeout"
        while not self._ending():
            length = self._read_length(deadline, limit)
            if length is None:
                return
            self._receive(length)
            deadline = time.monotonic() + self.config.idle_timeout
            limit = "idle_timeout"

    def _read_length(self, deadline: float, limit: str) -> int | None:
        """The next 8-byte length, or None if the peer closed cleanly before it."""
        header = bytearray(LENGTH.size)
        view = memoryview(header)
        got = 0
        while got < LENGTH.size:
            count = self._recv_into(view[got:], deadline)
            if count is None:
                raise _too_slow(f"no complete length within {limit}")
            if count == 0:
                if got:
                    raise _Ended(f"closed after {got} of the 8 bytes of a length")
                return None
            got += count
        return decode_length(header)

    def _receive(self, length: int) -> None:
        self._check_room(length)
        started = time.monotonic()
        name = f"scan_{time.time_ns() // 1_000_000}.npy"
        self.partial = self.store.open_partial(name, length, None)
        self._read_payload(self.partial, length)
        self._commit(length, started)

    def _read_payload(self, partial: PartialFile, length: int) -> None:
        """Stream ``length`` bytes into ``partial`` through a fixed buffer, checking the header.

        The deadline moves only when another PROGRESS_BYTES have arrived.
        """
        prefix = bytearray()
        needed = min(length, NPY_PREFIX)
        if not needed:
            _check_npy(prefix, length)
        view = memoryview(self.buffer)
        received = progress_mark = 0
        deadline = time.monotonic() + self.config.idle_timeout
        while received < length:
            count = self._recv_into(view[: min(len(view), length - received)], deadline)
            if count is None:
                raise _too_slow(
                    f"less than {human_size(PROGRESS_BYTES)} within idle_timeout, "
                    f"at {received} of {length} bytes"
                )
            if count == 0:
                raise _Ended(f"closed after {received} of {length} bytes")
            chunk = view[:count]
            if len(prefix) < needed:
                prefix += chunk[: needed - len(prefix)]
                if len(prefix) == needed:
                    _check_npy(prefix, length)
            partial.write(chunk)
            received += count
            if received - progress_mark >= PROGRESS_BYTES:
                progress_mark = received
                deadline = time.monotonic() + self.config.idle_timeout

    def _check_room(self, length: int) -> None:
        """Refuse before reading a byte of payload: the length alone may be absurd."""
        limit = self.config.max_file_size
        if length > limit:
            raise _Ended(
                f"refused a prototype file of {length} bytes: more than max_file_size "
                f"({human_size(limit)}); closing",
                logging.ERROR,
            )
        try:
            free = self.store.free_bytes()
        except OSError as error:
            raise _Ended(f"cannot check the free space: {error}; closing", logging.ERROR) from None
        if length + self.config.min_free_space > free:
            raise _Ended(
                f"refused a prototype file of {human_size(length)}: only {human_size(free)} "
                f"free and min_free_space is {human_size(self.config.min_free_space)}; free "
                f"some space on the receiver",
                logging.ERROR,
            )

    def _commit(self, length: int, started: float) -> None:
        partial, self.partial = self.partial, None
        assert partial is not None
        stored = partial.commit(time.time_ns())
        self.stats.stored(stored.path, length)
        seconds = time.monotonic() - started
        log.info(
            "%s: received prototype file %s (%s, %.1f s, unverified: the prototype sends no "
            "checksum)",
            self.peer,
            stored.path,
            human_size(length),
            seconds,
        )

    def _recv_into(self, view: memoryview, deadline: float) -> int | None:
        """recv_into against an absolute deadline (None once it has passed).

        Absolute, so that each byte a peer sends does not buy it more time.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv_into(view)
        except TimeoutError:
            return None


def _too_slow(what: str) -> _Ended:
    return _Ended(f"prototype sender too slow ({what}), cut off")


def _check_npy(prefix: bytes | bytearray, length: int) -> None:
    """Refuse a payload that is not one whole .npy file of exactly ``length`` bytes.

    ``prefix`` holds the first min(length, NPY_PREFIX) bytes, which is all a valid header
    can occupy, so the answer is final here and the rest need not be written to disk.
    """
    expected = npy_expected_size(io.BytesIO(bytes(prefix)))
    if expected is None:
        problem = "it is not a .npy file (bad magic, version or header)"
    elif expected != length:
        problem = f"its .npy header accounts for {expected} bytes, but {length} were announced"
    else:
        return
    raise _Ended(f"refused a prototype file: {problem}; nothing stored, closing", logging.ERROR)
