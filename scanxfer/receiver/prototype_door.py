"""The prototype door: old prototype senders deliver into this receiver during a migration.

The prototype's wire format is an 8-byte big-endian length, then the file's bytes; no name,
no checksum, no acknowledgement, no authentication.  The door exists only where the
administrator sets ``legacy_listen``, and only addresses in ``legacy_allow`` get past the
accept.  Since nothing on the wire can be checked, what arrives must at least be a whole,
self-consistent .npy file (its header accounts for every byte announced) before it is stored,
and the peer gets no say over how much memory is used or how long a connection may dawdle.

Files are stored like the prototype stored them, as ``scan_<epoch ms>.npy`` at the top of the
incoming directory, with the store's usual durability (fsync, link without overwriting, fsync
of the directory) and clash names, and go to the after-store hooks like any other.  Each
connection runs in its own thread, as the receiver's own connections do (the listener and
the threads are `doors.Door`'s), so an fsync on a slow SD card stalls only its own sender.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from ..config import ReceiverConfig
from ..npy import MAX_NPY_HEADER, npy_expected_size
from ..protocol.prototype import LENGTH, decode_length
from ..sizes import human_size
from ..store import Outcome, PartialFile, Store, StoreError
from .admission import Limits, NoRoom, Reservation, Reservations, TooLarge
from .after_store import AfterStore, ReceivedFile, run_after_store
from .doors import Door

log = logging.getLogger(__name__)

# A peer must deliver this much payload per idle_timeout, so that a trickle of single bytes
# cannot hold a connection (and a partial file) open for ever.
PROGRESS_BYTES = 64 * 1024
RECV_BUFFER = 1 << 20
# Magic, version, a 4-byte header length and the header itself: everything needed to size a
# .npy file, so the check can be made before the bulk of the payload is written.
NPY_PREFIX = 12 + MAX_NPY_HEADER


class StatsSink(Protocol):
    """What the door reports stored files to (receiver.Stats)."""

    def stored(self, path: str, size: int) -> None: ...


class _Ended(Exception):
    """The connection ends here; the message (for the log) says why, at ``level``."""

    def __init__(self, message: str, level: int = logging.WARNING) -> None:
        super().__init__(message)
        self.level = level


class PrototypeDoor(Door["PrototypeConnection"]):
    """The listening socket for prototype senders, at ``legacy_listen``."""

    label = "prototype door"
    setting = "legacy_listen"
    thread_prefix = "prototype"

    def __init__(
        self,
        config: ReceiverConfig,
        store: Store,
        stats: StatsSink,
        stopping: threading.Event,
        after_store: Sequence[AfterStore] = (),
        reservations: Reservations | None = None,
    ) -> None:
        if config.legacy_listen is None:
            raise ValueError("legacy_listen is not set: the prototype door is off")
        super().__init__(config.legacy_listen, config, backlog=16, logger=log)
        self._store, self._stats, self._stopping = store, stats, stopping
        self._after_store = tuple(after_store)
        # Shared with the scanxfer door, so that files in flight on both count together.
        self._reservations = reservations if reservations is not None else Reservations()
        log.warning(
            "the prototype door at %s is open: UNAUTHENTICATED and UNENCRYPTED, accepting "
            "prototype senders from %s; turn it off (legacy_listen: null) once the senders "
            "are migrated",
            self.address,
            ", ".join(str(network) for network in config.legacy_allow),
        )

    def screen(self, host: str, peer: str) -> bool:
        if _allowed(host, self.config.legacy_allow):
            return True
        self.warnings.warn(
            host,
            "%s: refused on the prototype door: not in legacy_allow; add its network "
            "there if it is one of your prototype senders",
            peer,
        )
        return False

    def serve(self, sock: socket.socket, host: str, peer: str) -> PrototypeConnection:
        return PrototypeConnection(
            sock,
            peer,
            self._store,
            self.config,
            self._stats,
            self._stopping,
            self._after_store,
            self._reservations,
        )

    def turn_away(self, sock: socket.socket, host: str, peer: str, count: int) -> None:
        # The prototype's wire has no way to say why: a log line for the administrator.
        self.warnings.warn(
            host,
            "%s: refused on the prototype door: already %d connections (max_connections)",
            peer,
            count,
        )
        sock.close()


def _allowed(host: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    address = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 zone
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 peer on a dual-stack socket
    return any(address in network for network in networks)


class PrototypeConnection:
    """One prototype sender's connection: length, payload, repeated until it closes."""

    # No handshake on this wire (its peers are screened by address at accept): each
    # connection holds a max_connections slot from the start.
    settled = True

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        store: Store,
        config: ReceiverConfig,
        stats: StatsSink,
        stopping: threading.Event,
        after_store: Sequence[AfterStore] = (),
        reservations: Reservations | None = None,
    ) -> None:
        self.sock, self.peer, self.store, self.config = sock, peer, store, config
        self.stats, self.stopping, self.after_store = stats, stopping, after_store
        self.limits = Limits.of(config)
        self.aborted = threading.Event()
        self.reservations = reservations if reservations is not None else Reservations()
        self.reservation: Reservation | None = None  # the free space its file was promised
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
            self._settle()
            self.sock.close()

    def abort(self) -> None:
        """End this connection from another thread: its recv returns, and `run` cleans up."""
        self.aborted.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """The receiver is stopping: abort, dropping the file being received.

        Without names or digests on the wire a prototype file can never resume, so there is
        nothing worth keeping for a next connection.
        """
        self.abort()

    def reconfigure(self, config: ReceiverConfig) -> None:
        self.limits = Limits.of(config)  # one object, swapped whole: the next file sees it

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
        self.reservation = self._check_room(length)
        started = time.monotonic()
        name = f"scan_{time.time_ns() // 1_000_000}.npy"
        self.partial = self.store.open_partial(name, length, None)
        self._read_payload(self.partial, length)
        self._commit(length, started)
        self._settle()

    def _settle(self) -> None:
        """The file is done with: what it was promised is free for other offers."""
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None

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
            if self.reservation is not None:
                self.reservation.arrived(count)
            received += count
            if received - progress_mark >= PROGRESS_BYTES:
                progress_mark = received
                deadline = time.monotonic() + self.config.idle_timeout

    def _check_room(self, length: int) -> Reservation:
        """Refuse before reading a byte of payload: the length alone may be absurd."""
        try:
            refusal = self.reservations.admit(length, 0, self.limits, self.store.free_bytes)
        except OSError as error:
            raise _Ended(f"cannot check the free space: {error}; closing", logging.ERROR) from None
        match refusal:
            case TooLarge(size, limit):
                raise _Ended(
                    f"refused a prototype file of {size} bytes: more than max_file_size "
                    f"({human_size(limit)}); closing",
                    logging.ERROR,
                )
            case NoRoom(size, free, reserve, promised):
                taken = f" ({human_size(promised)} of it promised to files in flight)"
                raise _Ended(
                    f"refused a prototype file of {human_size(size)}: only {human_size(free)} "
                    f"free{taken if promised else ''} and min_free_space is "
                    f"{human_size(reserve)}; free some space on the receiver",
                    logging.ERROR,
                )
        return refusal

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
        if self.after_store and stored.outcome is not Outcome.DUPLICATE:
            path = self.store.incoming_dir / stored.path
            received = ReceivedFile(path, stored.path, stored.size, None, None, self.peer)
            run_after_store(self.after_store, received)

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
