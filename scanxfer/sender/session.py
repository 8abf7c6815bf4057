"""One connection to the receiver: handshake, pipelined offers, streamed payloads.

A `Session` keeps up to `window` files in flight so many small files are not
bound by round trips, and streams each payload with `socket.sendfile` (the file
never passes through Python).  It knows nothing of retries or the journal:
`delivery.Delivery` decides what to offer and what an answer means.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import xxhash

from .. import protocol as p
from ..config import SenderConfig
from ..protocol import auth
from ..tls import client_context, peer_fingerprint, pin_matches

log = logging.getLogger("scanxfer.sender")

READ_CHUNK = 1 << 20
RECV_CHUNK = 1 << 16
TLS_CHUNK = 1 << 18  # payload per sendall when sendfile cannot bypass TLS
# From this size on the digest is computed while the file is sent, not before (see prepare):
# below it, reading the file twice costs little and the digest lets the receiver skip a
# file it already holds.
DEFER_DIGEST_FROM = 1 << 23
SEND_SLICE = 1 << 23  # sendfile per call: a sign of life for the watchdog at least every 8 MiB


class ConnectionLost(Exception):
    """The session is unusable; its files go back to the queue."""


class AuthenticationFailed(ConnectionLost):
    """The receiver and this sender do not recognise each other; retrying will not fix it."""


class FileChanged(Exception):
    """The file shrank while being streamed; its DATA frame cannot be completed."""


@dataclass
class FileJob:
    """One file to deliver, with the identity it is offered under."""

    relpath: str
    path: Path
    size: int = 0
    mtime_ns: int = 0
    digest: bytes = b""
    attempts: int = 0
    started: float = 0.0

    def prepare(self, alive: Callable[[], None] = lambda: None) -> None:
        """Take the file's current size, mtime and digest (it may have changed since queued).

        A big file is not hashed here: it is offered with a deferred digest and hashed while
        it is sent (`Session._stream`), so it is not read once more before the first byte
        goes out.  `alive` is called as the hashing goes: a slow disk takes a while.
        """
        with self.path.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            deferred = stat.st_size >= DEFER_DIGEST_FROM
            self.digest = p.DEFERRED_DIGEST if deferred else _digest(handle, alive)
        self.size, self.mtime_ns = stat.st_size, stat.st_mtime_ns


class _Hashing:
    """The digest of a whole file, computed in a thread while the file is sent.

    xxhash and file reads release the GIL, so the hash runs beside sendfile instead of
    before it; on this machine that takes 0.15 s per GiB off the transfer.
    """

    def __init__(self, path: Path) -> None:
        self._digest = b""
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                self._digest = _digest(handle, lambda: None)
        except OSError as error:
            self._error = error

    def result(self, alive: Callable[[], None]) -> bytes:
        while self._thread.is_alive():
            self._thread.join(timeout=1.0)
            alive()
        if self._error is not None:
            raise FileChanged(f"{self._error.filename} cannot be read any more: {self._error}")
        return self._digest


def _digest(handle: BinaryIO, alive: Callable[[], None]) -> bytes:
    hasher = xxhash.xxh3_128()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    while count := handle.readinto(buffer):
        hasher.update(view[:count])
        alive()
    return hasher.digest()


class Session:
    """One connection to the receiver: handshake, then offers, streams and answers."""

    def __init__(
        self, config: SenderConfig, instance: bytes, alive: Callable[[], None] = lambda: None
    ) -> None:
        if config.key is None:
            raise AuthenticationFailed(NOT_PAIRED)
        self.config, self.alive = config, alive
        self.sock, self.channel = _connect(config)
        self.stall_timeout = config.stall_timeout
        self.conn = p.Connection(p.Role.SENDER)
        self.inflight: dict[int, FileJob] = {}
        self.ready: deque[p.Ready] = deque()
        self.answers: list[tuple[FileJob, p.Ack | p.Nack]] = []
        self._ids = itertools.count(1)
        self._secret = auth.decode_secret(config.key)
        self._signed = b""
        hello = p.Hello(config.name, options={p.INSTANCE_OPTION: instance})
        self._outbox = bytearray(self.conn.send(hello))
        self.last_heard = time.monotonic()
        try:
            self._handshake()
        except ConnectionLost:
            self.sock.close()
            raise

    def _handshake(self) -> None:
        self._flush()
        deadline = time.monotonic() + self.stall_timeout
        while self.conn.state is p.ConnState.HANDSHAKE:
            if time.monotonic() > deadline:
                raise ConnectionLost("the receiver did not answer the handshake")
            try:
                self._poll(0.2)
            except ConnectionLost as error:
                if isinstance(error, AuthenticationFailed) or self.conn.version is not None:
                    raise
                hint = "" if self.config.tls else " (does it expect TLS? tls: must match)"
                raise ConnectionLost(f"{error} during the handshake{hint}") from error

    def _answer_challenge(self, challenge: p.Challenge) -> None:
        nonce = auth.new_nonce()
        self._signed = auth.transcript(
            challenge.version, self.config.name, challenge.nonce, nonce, self.channel
        )
        proof = auth.client_proof(self._secret, self._signed)
        self._outbox += self.conn.send(p.Authenticate(nonce, proof))
        self._flush()

    def _check_welcome(self, welcome: p.Welcome) -> None:
        if not auth.check_server_proof(self._secret, self._signed, welcome.proof):
            raise AuthenticationFailed(
                f"{where(self.config)} accepted this sender without knowing its key: it is "
                f"not the receiver this sender was paired with"
            )

    @property
    def free_slots(self) -> int:
        return self.conn.window - len(self.conn.files)

    @property
    def busy(self) -> bool:
        return bool(self.inflight)

    def offer(self, job: FileJob) -> None:
        file_id = next(self._ids) % 2**32
        self.inflight[file_id] = job
        self._outbox += self.conn.send(
            p.Offer(file_id, job.relpath, job.size, job.mtime_ns, job.digest)
        )

    def step(self, wait: float) -> list[tuple[FileJob, p.Ack | p.Nack]]:
        """Send queued offers, stream one ready file or wait up to `wait` s for answers."""
        self._flush()
        if self.ready:
            self._stream(self.ready.popleft())
            self.last_heard = time.monotonic()  # waiting for its answer starts now
            self._poll(0)
        else:
            self._poll(wait)
            silent = time.monotonic() - self.last_heard
            if self.inflight and silent > self.stall_timeout:
                raise ConnectionLost(f"no answer from the receiver for {silent:.0f} s")
        answers, self.answers = self.answers, []
        return answers

    def requeue(self) -> list[FileJob]:
        """Close without ceremony and hand back the files still in flight, oldest first."""
        self.close()
        jobs = list(self.inflight.values())
        self.inflight.clear()
        return jobs

    def close(self) -> None:
        if not self.inflight and self.conn.state is p.ConnState.OPEN:
            with contextlib.suppress(OSError, p.LocalProtocolError):
                self.sock.sendall(self.conn.send(p.Bye()))
        self.sock.close()

    def _stream(self, ready: p.Ready) -> None:
        job = self.inflight[ready.file_id]
        length = job.size - ready.offset
        if ready.offset:
            log.info("resuming %s at byte %d of %d", job.relpath, ready.offset, job.size)
        job.started = time.monotonic()
        try:
            handle = job.path.open("rb")
        except OSError as error:
            # The DATA frame is owed and cannot be sent: only closing the connection ends it.
            raise FileChanged(f"{job.relpath} cannot be read any more: {error}") from error
        header = self.conn.send(p.DataHeader(ready.file_id, ready.offset, length))
        with handle:
            hashing = _Hashing(job.path) if job.digest == p.DEFERRED_DIGEST else None
            self._sendall(header)
            sent = self._sendfile(handle, ready.offset, length) if length else 0
        if sent != length:
            raise FileChanged(f"{job.relpath} shrank while being sent ({sent} of {length} bytes)")
        if hashing is not None:
            # Bytes that changed meanwhile make this digest differ from the receiver's:
            # it refuses the file and it is sent again, never stored damaged.
            self._sendall(self.conn.send(p.Digest(ready.file_id, hashing.result(self.alive))))

    def _sendfile(self, handle: BinaryIO, offset: int, length: int) -> int:
        try:
            if isinstance(self.sock, ssl.SSLSocket):
                return _send_through_tls(self.sock, handle, offset, length, self.alive)
            return send_in_slices(self.sock, handle, offset, length, self.alive)
        except OSError as error:
            raise ConnectionLost(f"connection lost while streaming: {error}") from error

    def _flush(self) -> None:
        if self._outbox:
            self._sendall(self._outbox)
            self._outbox.clear()

    def _sendall(self, data: bytes | bytearray) -> None:
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise ConnectionLost(f"connection lost: {error}") from error

    def _poll(self, wait: float) -> None:
        """Read whatever answers have arrived, waiting up to `wait` s for the first."""
        # recv only after select said readable: with a socket timeout set, a
        # bare recv would wait for the whole stall timeout.  TLS may hold decrypted
        # bytes the kernel no longer shows as readable.
        while self._pending() or select.select([self.sock], [], [], wait)[0]:
            try:
                data = self.sock.recv(RECV_CHUNK)
            except OSError as error:
                raise ConnectionLost(f"connection lost: {error}") from error
            self.last_heard = time.monotonic()
            self._feed(data)
            if not data:
                return
            wait = 0

    def _feed(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
            while (event := self.conn.next_event()) is not p.NEED_DATA:
                self._on_event(event)
        except p.RemoteProtocolError as error:
            raise ConnectionLost(f"receiver broke the protocol: {error}") from error

    def _pending(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def _on_event(self, event: p.Event) -> None:
        match event:
            case p.Challenge():
                self._answer_challenge(event)
            case p.Welcome():
                self._check_welcome(event)
            case p.Error() if event.code is p.ErrorCode.AUTH_FAILED:
                raise AuthenticationFailed(
                    f"{where(self.config)} refused this sender's key ({event.message}): was "
                    f"it revoked, or the sender renamed? Pair it again: {PAIR_HINT}"
                )
            case p.Ready():
                self.ready.append(event)
            case p.Ack() | p.Nack():
                self.answers.append((self.inflight.pop(event.file_id), event))
            case p.Error():
                raise ConnectionLost(
                    f"receiver ended the connection: {event.code.name}: {event.message}"
                )
            case p.ConnectionClosed():
                raise ConnectionLost("receiver closed the connection")


def where(config: SenderConfig) -> str:
    return f"receiver {config.receiver}"


PAIR_HINT = "on the receiver `sudo scanxfer keys add NAME`, then here `scanxfer pair 'LINE'`"
NOT_PAIRED = f"this sender has no key yet: {PAIR_HINT}"


def _connect(config: SenderConfig) -> tuple[socket.socket, bytes]:
    """A connection to the receiver, TLS-secured and pinned unless tls is false.

    Returns the socket and the channel the proofs are bound to (the pinned certificate).
    """
    address = (config.receiver.host, config.receiver.port)
    try:
        sock = socket.create_connection(address, timeout=config.connect_timeout)
    except OSError as error:
        raise ConnectionLost(f"cannot connect to {where(config)}: {error}") from error
    # A send that makes no progress this long is a stall.
    if not config.tls:
        sock.settimeout(config.stall_timeout)
        return sock, b""
    if config.fingerprint is None:
        sock.close()
        raise AuthenticationFailed(f"no receiver fingerprint to check TLS against: {PAIR_HINT}")
    sock.settimeout(config.stall_timeout)
    try:
        secured = client_context().wrap_socket(sock)
    except TimeoutError as error:
        sock.close()
        raise ConnectionLost(f"{where(config)} did not answer the handshake (TLS)") from error
    except (ssl.SSLError, OSError) as error:
        sock.close()
        hint = " (does the receiver have tls: false? tls: must match)"
        raise ConnectionLost(f"no TLS handshake with {where(config)}: {error}{hint}") from error
    actual = peer_fingerprint(secured)
    if not pin_matches(actual, config.fingerprint):
        secured.close()
        raise AuthenticationFailed(
            f"{where(config)} presented certificate {actual}, not the pinned "
            f"{config.fingerprint}: someone may be in the middle, or the receiver was "
            f"reinstalled; if so, pair again: {PAIR_HINT}"
        )
    return secured, bytes.fromhex(actual)


def send_in_slices(
    sock: socket.socket, handle: BinaryIO, offset: int, length: int, alive: Callable[[], None]
) -> int:
    """socket.sendfile, a slice at a time, calling `alive` between slices: at 100 MB/s a
    big scan takes minutes, longer than the watchdog waits for a sign of life."""
    sent = 0
    while sent < length:
        count = sock.sendfile(handle, offset + sent, min(SEND_SLICE, length - sent))
        alive()
        if count == 0:
            break  # the file shrank: the caller reports it
        sent += count
    return sent


def _send_through_tls(
    sock: ssl.SSLSocket, handle: BinaryIO, offset: int, length: int, alive: Callable[[], None]
) -> int:
    """sendfile for TLS: the kernel cannot encrypt, so the bytes pass through in big slices."""
    buffer = bytearray(TLS_CHUNK)
    view = memoryview(buffer)
    sent = 0
    while sent < length:
        count = os.preadv(handle.fileno(), [view[: min(TLS_CHUNK, length - sent)]], offset + sent)
        if count == 0:
            break  # the file shrank: the caller reports it
        sock.sendall(view[:count])
        alive()
        sent += count
    return sent
