"""The scanxfer transport: one connection to the receiver, with handshake, pipelined
offers and streamed payloads.

A `Session` keeps up to `window` files in flight so many small files are not
bound by round trips, and streams each payload with `socket.sendfile` (the file
never passes through Python).  It knows nothing of retries or the journal:
`delivery.Delivery` decides what to offer and what an answer means.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import select
import socket
import ssl
import time
from collections import deque

from .. import cipher
from .. import protocol as p
from ..config import SenderConfig
from ..protocol import auth
from ..tls import client_context, format_fingerprint, peer_fingerprint, pin_matches
from ..tls_channel import TLSChannel
from .job import BackgroundDigest, FileChanged, FileJob, file_digest
from .transport import (
    Answer,
    AuthenticationFailed,
    CertificateMismatch,
    ConnectionLost,
    KeyRefused,
    Pulse,
    TransportKind,
    Withdrawn,
    connect,
    send_in_slices,
    tls_handshake,
    where,
)

log = logging.getLogger("scanxfer.sender")

RECV_CHUNK = 1 << 16
TLS_CHUNK = 1 << 18  # payload per sendall when sendfile cannot bypass TLS
# Names this process to the receiver, so a reconnection can take over a stalled connection.
INSTANCE = secrets.token_bytes(8)
# The extensions this sender asks for in its HELLO (docs/protocol.md 3.1): withdrawing a file
# that changed, and telling a deferred digest early when the receiver may hold the file.
EXTENSIONS = {p.CANCEL_OPTION: p.CANCEL_ON, p.ASK_DIGEST_OPTION: p.ASK_DIGEST_ON}
# Asked for on plain TCP only, where nothing else authenticates the frames; TLS does.
FRAME_AUTH = {p.FRAME_AUTH_OPTION: p.FRAME_AUTH_ON}


class Session:
    """One connection to the receiver: handshake, then offers, streams and answers."""

    def __init__(self, config: SenderConfig, instance: bytes, alive: Pulse | None = None) -> None:
        if config.key is None:
            raise AuthenticationFailed(NOT_PAIRED)
        self.config, self.alive = config, alive or Pulse()
        self.sock, self.channel = _connect(config, self.alive)
        self.stall_timeout = config.stall_timeout
        self.conn = p.Connection(p.Role.SENDER)
        self.offered: dict[int, FileJob] = {}  # by file id, until answered
        self.ready: deque[p.Ready] = deque()
        self.asked: deque[int] = deque()  # file ids whose deferred digest is wanted now
        self.answers: list[tuple[FileJob, Answer]] = []
        self.failure: ConnectionLost | None = None  # raised once `answers` are handed out
        self._ids = itertools.count(1)
        self._secret = auth.decode_secret(config.key)
        self._signed = b""
        options = {p.INSTANCE_OPTION: instance, **EXTENSIONS}
        if not config.tls:
            options |= FRAME_AUTH
            self.conn.use_frame_key(auth.verifier(self._secret).server_key)
        hello = p.Hello(config.name, options=options)
        self._outbox = bytearray(self.conn.send(hello))
        self.last_heard = time.monotonic()
        try:
            self._handshake()
        except ConnectionLost:  # Stopped too
            self.sock.close()
            raise

    def _handshake(self) -> None:
        self._flush()
        deadline = time.monotonic() + self.stall_timeout
        while self.conn.state is p.ConnState.HANDSHAKE:
            self.alive()  # a stop request ends the wait for the receiver's answer
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
        if not self.config.tls and not self.conn.authenticates_frames:
            # Its frames would be unauthenticated: anyone on the path could forge an ACK.
            raise AuthenticationFailed(
                f"{where(self.config)} cannot authenticate frames, which this sender requires "
                f"with tls: false: upgrade scanxfer on the receiver (or use TLS)"
            )

    @property
    def free_slots(self) -> int:
        if self.failure is not None:
            return 0  # the connection has ended: offer nothing more, the next step says why
        return self.conn.window - len(self.conn.files)

    @property
    def in_flight(self) -> int:
        return len(self.offered)

    def offer(self, job: FileJob) -> None:
        file_id = next(self._ids) % 2**32
        self.offered[file_id] = job
        self._outbox += self.conn.send(
            p.Offer(file_id, job.relpath, job.size, job.mtime_ns, job.digest)
        )

    def step(self, wait: float) -> list[tuple[FileJob, Answer]]:
        """Send queued offers, stream one ready file or wait up to `wait` s for answers.

        Answers read before the connection failed are returned, and the failure is raised
        by the next call: a receiver that ACKs a file and hangs up in one breath (it is
        shutting down) has stored it, and the file must count as delivered.
        """
        if self.failure is not None:
            raise self.failure
        try:
            self._exchange(wait)
        except ConnectionLost as error:
            if not self.answers:
                raise
            self.failure = error
        answers, self.answers = self.answers, []
        return answers

    def _exchange(self, wait: float) -> None:
        self._flush()
        if self.asked:
            # Before any payload: the answer may spare the receiver a whole file's bytes.
            self._tell_digest(self.asked.popleft())
            self.last_heard = time.monotonic()  # waiting for its answer starts now
            self._poll(0)
        elif self.ready:
            self._stream(self.ready.popleft())
            self.last_heard = time.monotonic()  # waiting for its answer starts now
            self._poll(0)
        else:
            self._poll(wait)
            silent = time.monotonic() - self.last_heard
            if self.offered and silent > self.stall_timeout:
                raise ConnectionLost(f"no answer from the receiver for {silent:.0f} s")

    def requeue(self) -> list[FileJob]:
        """Close without ceremony and hand back the files still in flight, oldest first."""
        self.close()
        jobs = list(self.offered.values())
        self.offered.clear()
        return jobs

    def close(self) -> None:
        if not self.offered and self.conn.state is p.ConnState.OPEN:
            with contextlib.suppress(OSError, p.LocalProtocolError):
                self.sock.sendall(self.conn.send(p.Bye()))
        self.sock.close()

    def _stream(self, ready: p.Ready) -> None:
        job = self.offered[ready.file_id]
        assert job.handle is not None  # prepared before it was offered
        if (why := job.changed()) and self.conn.can_cancel:
            self._withdraw(ready.file_id, job, why)  # not a byte of a stale version goes out
            return
        length = job.size - ready.offset
        if ready.offset:
            log.info("resuming %s at byte %d of %d", job.relpath, ready.offset, job.size)
        job.started = time.monotonic()
        # Still due unless the receiver asked for it before the data (`_tell_digest`).
        deferred = self.conn.files[ready.file_id].digest_due
        hashing = BackgroundDigest(job.handle, job.relpath) if deferred else None
        self._sendall(self.conn.send(p.DataHeader(ready.file_id, ready.offset, length)))
        sent = self._sendfile(job, ready.offset, length) if length else 0
        if sent < length:
            self._complete_shrunk_payload(job, length - sent, deferred)
        why = "shrank while being sent" if sent < length else job.changed()
        if hashing is None:
            # The OFFER's digest was taken from the version checked: the receiver stores
            # exactly that version or refuses the bytes, whatever happened meanwhile.
            return
        digest = hashing.result(self.alive)
        if why:
            # The digest of bytes read while the file changed may match a torn copy.
            self._withdraw(ready.file_id, job, why)
            return
        job.sent_digest = digest
        self._sendall(self.conn.send(p.Digest(ready.file_id, digest)))

    def _tell_digest(self, file_id: int) -> None:
        """Hash a file offered with a deferred digest, which the receiver wants before its data.

        It reads the version checked (the job's open file), at explicit offsets, calling
        `alive` as it goes.  A file that changed meanwhile is withdrawn: the digest of bytes
        read while it changed could vouch for a copy of no version at all.
        """
        job = self.offered[file_id]
        assert job.handle is not None  # prepared before it was offered
        why = job.changed()
        if not why:
            try:
                digest = file_digest(job.handle.fileno(), self.alive)
            except OSError as error:
                why = f"cannot be read any more: {error}"
            else:
                why = job.changed()
        if why:
            self._withdraw(file_id, job, why)
            return
        log.info("%s: the receiver may hold it already; told it the digest first", job.relpath)
        job.sent_digest = digest
        self._sendall(self.conn.send(p.Digest(file_id, digest)))

    def _complete_shrunk_payload(self, job: FileJob, missing: int, deferred: bool) -> None:
        """The file shrank mid-payload: finish the DATA frame with zeros, or give up the link.

        The zeros are never stored as a scan: a deferred digest is withdrawn after them, and
        an OFFER's digest matches them only if they are the very bytes the file held when it
        was checked.  A receiver that cannot be told to withdraw a file must see the
        connection end instead.
        """
        if deferred and not self.conn.can_cancel:
            raise FileChanged(f"{job.relpath} shrank while being sent")
        zeros = memoryview(bytes(min(missing, TLS_CHUNK)))
        while missing > 0:
            chunk = min(missing, len(zeros))
            self._sendall(self.conn.send_payload(zeros[:chunk]))
            missing -= chunk
            self.alive()

    def _withdraw(self, file_id: int, job: FileJob, why: str) -> None:
        """Tell the receiver to drop the file; it is answered here, by the sender itself."""
        if not self.conn.can_cancel:
            raise FileChanged(f"{job.relpath} {why}")
        self._sendall(self.conn.send(p.Cancel(file_id)))
        del self.offered[file_id]
        self.answers.append((job, Withdrawn(why)))

    def _sendfile(self, job: FileJob, offset: int, length: int) -> int:
        try:
            seal = self.conn.send_payload if self.conn.authenticates_frames else None
            return send_in_slices(self.sock, job, offset, length, self.alive, seal)
        except OSError as error:
            raise ConnectionLost(f"connection lost while streaming: {error}") from error

    def _flush(self) -> None:
        if self._outbox:
            self._sendall(self._outbox)
            self._outbox.clear()

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
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
        except p.FrameAuthError as error:
            raise ConnectionLost(
                f"{error}: the connection was tampered with or the link corrupts data; "
                "nothing from that frame on is believed, and files without an answer are "
                "offered again"
            ) from error
        except p.RemoteProtocolError as error:
            raise ConnectionLost(f"receiver broke the protocol: {error}") from error

    def _pending(self) -> bool:
        return isinstance(self.sock, TLSChannel) and self.sock.pending() > 0

    def _on_event(self, event: p.Event) -> None:
        match event:
            case p.Challenge():
                self._answer_challenge(event)
            case p.Welcome():
                self._check_welcome(event)
            case p.Error() if event.code is p.ErrorCode.AUTH_FAILED:
                raise KeyRefused(
                    f"{where(self.config)} refused this sender's key ({event.message}): was "
                    f"it revoked, or the sender renamed? Pair it again: {PAIR_HINT}",
                    event.message,
                )
            case p.Ready():
                self.ready.append(event)
            case p.AskDigest():
                self.asked.append(event.file_id)
            case p.Ack() | p.Nack():
                self.answers.append((self.offered.pop(event.file_id), event))
            case p.Error():
                raise ConnectionLost(
                    f"receiver ended the connection: {event.code.name}: {event.message}"
                )
            case p.ConnectionClosed():
                raise ConnectionLost("receiver closed the connection")


def open_session(config: SenderConfig, alive: Pulse) -> Session:
    """Connect and complete the handshake: the scanxfer kind's `TransportKind.open`."""
    session = Session(config, INSTANCE, alive)
    log.info("connected to %s: %s", where(config), protection(session.sock))
    return session


def protection(sock: socket.socket | TLSChannel) -> str:
    """What guards the connection, for the log: the TLS version and the cipher the receiver
    chose (it decides, see scanxfer.cipher), or plain TCP's frame tags."""
    if isinstance(sock, TLSChannel):
        suite, version, _ = sock.cipher() or ("?", "?", 0)
        return f"{version.replace('TLSv', 'TLS ')}, {cipher.describe(suite)}"
    return "plain TCP (tls: false), every frame authenticated, nothing encrypted"


def check_pairing(config: SenderConfig) -> None:
    """Connect, complete the handshake and say goodbye: proof that `config` gets in.

    `scanxfer pair` calls it before it writes anything.  Raises ConnectionLost (nothing
    answered, or not scanxfer), CertificateMismatch or KeyRefused (AuthenticationFailed).
    """
    Session(config, INSTANCE).close()


SCANXFER = TransportKind(
    name="scanxfer",
    open=open_session,
    needs_key=True,
    done_message="all %d files delivered and stored durably",
)

PAIR_HINT = "on the receiver `sudo scanxfer keys add NAME`, then here `scanxfer pair 'LINE'`"
NOT_PAIRED = f"this sender has no key yet: {PAIR_HINT}"


def _connect(config: SenderConfig, pulse: Pulse) -> tuple[socket.socket | TLSChannel, bytes]:
    """A connection to the receiver, TLS-secured and pinned unless tls is false.

    Returns the socket and the channel the proofs are bound to (the pinned certificate).
    """
    if not config.tls:
        return connect(config, pulse), b""
    if config.fingerprint is None:
        raise AuthenticationFailed(f"no receiver fingerprint to check TLS against: {PAIR_HINT}")
    sock = connect(config, pulse)
    try:
        secured = tls_handshake(sock, client_context(), pulse)
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
        raise CertificateMismatch(
            f"{where(config)} presented certificate {format_fingerprint(actual)}, not the "
            f"pinned {format_fingerprint(config.fingerprint)}: someone may be in the middle, "
            f"or the receiver was reinstalled; if so, pair again: {PAIR_HINT}",
            actual,
            config.fingerprint,
        )
    return secured, bytes.fromhex(actual)
