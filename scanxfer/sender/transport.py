"""The seam between the sender's policy and the wire: what carries files to a receiver.

`delivery.Delivery` decides what to offer, when to retry and what to journal; a `Transport`
only moves offered files and reports each one's answer.  Two kinds exist: the scanxfer
session (`session.SCANXFER`) and the prototype mode (`prototype.PROTOTYPE`, `send --legacy`).
A new way to deliver files (another protocol, object storage) implements `Transport`,
describes itself with a `TransportKind`, and is added to `sender.TRANSPORTS`; the queue,
retries, journal and hand-off then work for it unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import protocol as p
from ..config import SenderConfig
from ..tls_channel import TLSChannel
from .job import FileJob
from .pacing import MAX_SLICE, SLICE_SECONDS, Pacer

log = logging.getLogger(__name__)

# TLS, and frame authentication on plain TCP, cannot use sendfile: the bytes are read and
# encrypted, or tagged, this much a time.
TLS_SLICE = 1 << 18
# Given payload bytes about to go out, returns the bytes to send for them (with their tags).
Seal = Callable[[memoryview], bytes]


class ConnectionLost(Exception):
    """The transport is unusable; its files go back to the queue."""


class AuthenticationFailed(ConnectionLost):
    """The receiver and this sender do not recognise each other; retrying will not fix it."""


class CertificateMismatch(AuthenticationFailed):
    """The receiver presented another certificate than the pinned one (fingerprints: hex)."""

    def __init__(self, message: str, presented: str, pinned: str) -> None:
        super().__init__(message)
        self.presented, self.pinned = presented, pinned


class KeyRefused(AuthenticationFailed):
    """The receiver does not accept this sender's name and key; `reason` is what it said."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Stopped(ConnectionLost):
    """A stop was asked for (SIGINT, SIGTERM) in the middle of a file.

    The connection is dropped without ceremony: the receiver keeps what it has as a partial,
    the journal still has the file to send, and the next run resumes it.
    """


@dataclass(frozen=True)
class Withdrawn:
    """The sender's own answer for a file it withdrew (CANCEL): it changed while being sent."""

    reason: str


# What became of one offered file: stored (ACK), refused (NACK), or taken back by the sender.
Answer = p.Ack | p.Nack | Withdrawn


class Transport(Protocol):
    """An open way to a receiver, as `Delivery` uses it.

    `Delivery` offers prepared files (`FileJob.prepare`: open, checked, hashed) while
    `free_slots` allows, then calls `step` until each offered file has its answer.  `step`
    raises `ConnectionLost` when the way is gone and `job.FileChanged` when a file changed
    in a way the receiver cannot be told about; `Delivery` then takes the unanswered files
    back with `requeue` and opens a new transport later.
    """

    @property
    def free_slots(self) -> int:
        """How many more files may be offered now."""
        ...

    @property
    def in_flight(self) -> int:
        """How many offered files have no answer yet."""
        ...

    def offer(self, job: FileJob) -> None:
        """Take a prepared file to deliver; its answer comes from a later `step`."""
        ...

    def step(self, wait: float) -> list[tuple[FileJob, Answer]]:
        """Move offered files along, waiting up to about `wait` s; return the answers.

        An answer once received is returned before any failure is raised: the receiver
        may have stored the file.
        """
        ...

    def requeue(self) -> list[FileJob]:
        """Close without ceremony and hand back the files not answered, oldest first."""
        ...

    def close(self) -> None:
        """End an idle transport politely."""
        ...


class Meter(Protocol):
    """Counts a payload's bytes as they go out, for the progress bar (`run_state.Progress`)."""

    def resumed(self, relpath: str, offset: int) -> None:
        """A payload of `relpath` starts at `offset`: the receiver holds the bytes before it."""
        ...

    def sent(self, relpath: str, count: int) -> None:
        """`count` more bytes of `relpath` went out."""
        ...


def _nothing() -> None:
    """No watchdog to tell (send --once, tests)."""


class Pulse:
    """What the sender does between two slices of a file it sends or hashes.

    Calling it is the watchdog's sign of life and the point where a stop request ends the
    work (it raises `Stopped`): a big file is no longer one step that cannot be interrupted.
    `sent` also counts each slice for the progress bar and holds the pace to `max_rate`.
    One pulse serves a whole `Delivery`, so the limit holds across files and connections.
    """

    def __init__(
        self,
        alive: Callable[[], None] = _nothing,
        stop: threading.Event | None = None,
        meter: Meter | None = None,
        max_rate: int | None = None,
    ) -> None:
        self.alive = alive
        self.stop = stop if stop is not None else threading.Event()
        self.meter = meter
        self.pacer = Pacer(max_rate)

    def __call__(self) -> None:
        self.alive()
        if self.stop.is_set():
            raise Stopped("stopped on request")

    def resumed(self, relpath: str, offset: int) -> None:
        if self.meter is not None:
            self.meter.resumed(relpath, offset)

    def sent(self, relpath: str, count: int) -> None:
        """Count a slice, wait as long as the limit asks (a stop cuts the wait), check in."""
        if self.meter is not None:
            self.meter.sent(relpath, count)
        if (delay := self.pacer.delay(count, time.monotonic())) > 0:
            self.stop.wait(delay)
        self()


# How often a connection attempt looks up from its wait, to notice a stop request.
CHECK_SECONDS = 0.2


def connect(config: SenderConfig, pulse: Pulse) -> socket.socket:
    """A TCP connection to the receiver, given up after connect_timeout or on a stop request.

    A blocking connect to an address that drops packets would hold a Ctrl-C for the whole
    connect_timeout: this one waits in short steps and checks in with the pulse between them.
    Each address the name resolves to is tried in turn, as socket.create_connection does.
    """
    host, port = config.receiver.host, config.receiver.port
    deadline = time.monotonic() + config.connect_timeout
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ConnectionLost(f"cannot connect to {where(config)}: {error}") from error
    failure: OSError | None = None
    for family, kind, proto, _, address in addresses:
        try:
            sock = _connect_to(socket.socket(family, kind, proto), address, deadline, pulse)
        except OSError as error:
            failure = error
            continue
        # A send, sendfile or recv that makes no progress this long is a stall.
        sock.settimeout(config.stall_timeout)
        return sock
    raise ConnectionLost(f"cannot connect to {where(config)}: {failure}") from failure


def _connect_to(
    sock: socket.socket, address: tuple[Any, ...], deadline: float, pulse: Pulse
) -> socket.socket:
    try:
        sock.setblocking(False)
        if (code := sock.connect_ex(address)) not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        while not select.select([], [sock], [], CHECK_SECONDS)[1]:
            pulse()
            if time.monotonic() > deadline:
                raise TimeoutError("timed out")
        if code := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            raise OSError(code, os.strerror(code))
    except BaseException:
        sock.close()
        raise
    return sock


def tls_handshake(sock: socket.socket, context: ssl.SSLContext, pulse: Pulse) -> TLSChannel:
    """The TLS handshake, checking in with the pulse while it waits for the receiver.

    Raises TimeoutError after the socket's timeout (stall_timeout) without the handshake done.
    """
    secured = TLSChannel(sock, context, server_side=False)
    try:
        secured.do_handshake(pulse)
    except BaseException:
        secured.close()  # the socket it wrapped is closed with it
        raise
    return secured


# Opens a transport to the configured receiver; its `Pulse` is called during long waits and
# between slices.  Raises ConnectionLost, or AuthenticationFailed.
Opener = Callable[[SenderConfig, Pulse], Transport]


@dataclass(frozen=True)
class TransportKind:
    """One way of delivering, by name: how to open it and what its delivery promises."""

    name: str
    open: Opener
    # Whether `scanxfer pair` must have given this sender a key before it may send.
    needs_key: bool
    # Logged when `send --once` delivered everything; %d is the number of files.
    done_message: str


def where(config: SenderConfig) -> str:
    return f"receiver {config.receiver}"


def send_in_slices(
    sock: socket.socket | TLSChannel,
    job: FileJob,
    offset: int,
    length: int,
    pulse: Pulse,
    seal: Seal | None = None,
) -> int:
    """Send `length` bytes of the job's file from `offset`; how many went (fewer: it shrank).

    A slice at a time, each taking about SLICE_SECONDS whatever the link's speed, with
    `pulse` between slices: a sign of life, the progress count, the pace of `max_rate`, and
    a stop request noticed mid-file.  Plain TCP uses sendfile (the bytes never pass through
    Python); TLS cannot, nor can `seal` (frame authentication, which must see the bytes it
    tags), so then the bytes are read and sent in slices.  The socket must have a timeout: a
    link that takes nothing for that long is a stall (TimeoutError).
    """
    assert job.handle is not None  # prepared before it was offered
    fd = job.handle.fileno()
    pulse.resumed(job.relpath, offset)
    reads = seal is not None or isinstance(sock, TLSChannel)
    buffer = memoryview(bytearray(TLS_SLICE)) if reads else None
    stall = sock.gettimeout() or SLICE_SECONDS
    quiet_since = time.monotonic()
    sent = 0
    while sent < length:
        want = min(pulse.pacer.slice_size(TLS_SLICE if reads else MAX_SLICE), length - sent)
        if buffer is not None:
            count, ended = _read_slice(sock, fd, offset + sent, buffer[:want], seal)
        else:
            assert isinstance(sock, socket.socket)  # `reads` for a TLS channel
            count, ended = _sendfile_slice(sock, fd, offset + sent, want)
        sent += count
        now = time.monotonic()
        if count:
            quiet_since = now
        elif ended:
            break  # the file shrank: the caller reports it
        elif now - quiet_since > stall:
            raise TimeoutError(f"the receiver took no data for {now - quiet_since:.0f} s")
        try:
            pulse.sent(job.relpath, count)
        except Stopped:
            _reset_on_close(sock)
            raise
    return sent


def _reset_on_close(sock: socket.socket | TLSChannel) -> None:
    """Make closing the socket reset the connection instead of trickling out what it holds.

    After a stop mid-file the bytes still queued would keep the receiver's side of the
    connection, and the partial with it, busy for as long as a slow link takes to carry them;
    the next run would be told the file is being received on another connection.
    """
    plain = sock.plain if isinstance(sock, TLSChannel) else sock
    with contextlib.suppress(OSError):
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _sendfile_slice(sock: socket.socket, fd: int, offset: int, count: int) -> tuple[int, bool]:
    """sendfile for up to SLICE_SECONDS; (bytes sent, whether the file ended first).

    The socket is non-blocking (it has a timeout), so a full send buffer costs a wait that
    ends with the slice, not a block until a slow link has drained `count` bytes.
    """
    deadline = time.monotonic() + SLICE_SECONDS
    sent = 0
    while sent < count:
        try:
            done = os.sendfile(sock.fileno(), fd, offset + sent, count - sent)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [sock], [], left)[1]:
                break
            continue
        if done == 0:
            return sent, True
        sent += done
    return sent, False


def _read_slice(
    sock: socket.socket | TLSChannel, fd: int, offset: int, view: memoryview, seal: Seal | None
) -> tuple[int, bool]:
    count = os.preadv(fd, [view], offset)
    if count:
        sock.sendall(view[:count] if seal is None else seal(view[:count]))
    return count, count == 0
