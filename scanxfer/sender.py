"""The sender: offer complete files to the receiver and stream them until ACKed.

A `Session` is one connection: it keeps up to `window` files in flight so many
small files are not bound by round trips, and streams each payload with
`socket.sendfile` (the file never passes through Python).  `Delivery` owns the
queue and the retry policy, and survives any number of sessions: a lost
connection puts its files back at the front of the queue and the receiver's
partials let the next session resume them.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import random
import select
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import xxhash

from . import protocol as p
from .config import SenderConfig
from .receiver import human_size, rate
from .watcher import CompletionWatcher, npy_complete, scan

log = logging.getLogger("scanxfer.sender")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
READ_CHUNK = 1 << 20
RECV_CHUNK = 1 << 16
# --once gives up when this many connection attempts in a row fail.
ONCE_CONNECT_ATTEMPTS = 6
# --once marks a file failed after this many retryable refusals.
ONCE_FILE_ATTEMPTS = 5
# A daemon closes an idle connection after this long; the next file reconnects.
IDLE_DISCONNECT_SECONDS = 15.0


class ConnectionLost(Exception):
    """The session is unusable; its files go back to the queue."""


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

    def prepare(self) -> None:
        """Take the file's current size, mtime and digest (it may have changed since queued)."""
        with self.path.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            self.digest = _digest(handle)
        self.size, self.mtime_ns = stat.st_size, stat.st_mtime_ns


def _digest(handle: object) -> bytes:
    hasher = xxhash.xxh3_128()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    while count := handle.readinto(buffer):  # type: ignore[attr-defined]
        hasher.update(view[:count])
    return hasher.digest()


class Session:
    """One connection to the receiver: handshake, then offers, streams and answers."""

    def __init__(self, config: SenderConfig) -> None:
        address = (config.receiver.host, config.receiver.port)
        try:
            self.sock = socket.create_connection(address, timeout=config.connect_timeout)
        except OSError as error:
            raise ConnectionLost(f"cannot connect to {_where(config)}: {error}") from error
        # A blocking send or sendfile that makes no progress this long is a stall.
        self.sock.settimeout(config.stall_timeout)
        self.stall_timeout = config.stall_timeout
        self.conn = p.Connection(p.Role.SENDER)
        self.inflight: dict[int, FileJob] = {}
        self.ready: deque[p.Ready] = deque()
        self.answers: list[tuple[FileJob, p.Ack | p.Nack]] = []
        self._ids = itertools.count(1)
        self._outbox = bytearray(self.conn.send(p.Hello(config.name)))
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
            self._poll(0.2)

    @property
    def free_slots(self) -> int:
        return self.conn.window - len(self.conn.files) if self.conn.version else 0

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
        header = self.conn.send(p.DataHeader(ready.file_id, ready.offset, length))
        with job.path.open("rb") as handle:
            self._sendall(header)
            sent = self._sendfile(handle, ready.offset, length) if length else 0
        if sent != length:
            raise FileChanged(f"{job.relpath} shrank while being sent ({sent} of {length} bytes)")

    def _sendfile(self, handle: object, offset: int, length: int) -> int:
        try:
            return self.sock.sendfile(handle, offset, length)  # type: ignore[arg-type]
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
        # bare recv would wait for the whole stall timeout.
        while select.select([self.sock], [], [], wait)[0]:
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

    def _on_event(self, event: p.Event) -> None:
        match event:
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


class Backoff:
    """Exponential backoff with jitter, so many senders do not retry in lockstep."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2**self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


@dataclass
class Delivery:
    """The queue of files, the retry policy, and the sessions that carry them."""

    config: SenderConfig
    once: bool
    stop: threading.Event = field(default_factory=threading.Event)
    pending: deque[FileJob] = field(default_factory=deque)
    delayed: list[tuple[float, int, FileJob]] = field(default_factory=list)
    failed: list[tuple[FileJob, str]] = field(default_factory=list)
    delivered: int = 0
    unreachable: str = ""
    session: Session | None = None
    paused_until: float = 0.0
    last_activity: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.connect_backoff = Backoff(self.config.retry_initial, self.config.retry_max)
        self.space_backoff = Backoff(self.config.retry_initial, self.config.retry_max)
        self._tiebreak = itertools.count()

    def add(self, relpath: str) -> None:
        self.pending.append(FileJob(relpath, self.config.watch_dir / relpath))

    @property
    def finished(self) -> bool:
        """Nothing left to do, or told to stop, or (--once) the receiver is out of reach."""
        return (
            self.stop.is_set()
            or bool(self.unreachable)
            or (not self.pending and not self.delayed and not self.busy)
        )

    @property
    def busy(self) -> bool:
        return self.session is not None and self.session.busy

    def step(self) -> None:
        """Make some progress: connect if needed, fill the window, exchange once.

        Returns at once when there is nothing to send, so a daemon can wait on
        its watcher instead.
        """
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            self.pending.append(heapq.heappop(self.delayed)[2])
        if not self.pending and not self.busy:
            self._maybe_disconnect(now)
            self.stop.wait(min(0.2, self.delayed[0][0] - now) if self.delayed else 0)
            return
        if now < self.paused_until:
            self.stop.wait(min(0.2, self.paused_until - now))
            return
        if self.session is None and not self._connect():
            return
        try:
            self._exchange()
        except (ConnectionLost, FileChanged) as error:
            self._lost(error)

    def _exchange(self) -> None:
        session = self.session
        assert session is not None
        while self.pending and session.free_slots > 0:
            job = self.pending.popleft()
            if self._prepare(job):
                session.offer(job)
        for job, answer in session.step(wait=0.2):
            self._answered(job, answer)

    def _prepare(self, job: FileJob) -> bool:
        try:
            job.prepare()
        except OSError as error:
            log.warning("skipping %s: %s", job.relpath, error.strerror or error)
            return False
        return True

    def _connect(self) -> bool:
        try:
            self.session = Session(self.config)
        except ConnectionLost as error:
            self._connection_failed(str(error))
            return False
        log.info("connected to %s", _where(self.config))
        self.last_activity = time.monotonic()
        return True

    def _connection_failed(self, reason: str) -> None:
        delay = self.connect_backoff.next_delay()
        if self.once and self.connect_backoff.failures >= ONCE_CONNECT_ATTEMPTS:
            self.unreachable = reason
            return
        log.warning("%s; retrying in %.1f s", reason, delay)
        self.stop.wait(delay)

    def _lost(self, error: Exception) -> None:
        assert self.session is not None
        jobs = self.session.requeue()
        self.session = None
        self.pending.extendleft(reversed(jobs))
        if isinstance(error, FileChanged):
            log.warning("%s; it will be offered again", error)
            return
        self._connection_failed(str(error))

    def _answered(self, job: FileJob, answer: p.Ack | p.Nack) -> None:
        self.last_activity = time.monotonic()
        if isinstance(answer, p.Ack):
            self._acked(job, answer)
        else:
            self._refused(job, answer)

    def _acked(self, job: FileJob, ack: p.Ack) -> None:
        self.delivered += 1
        self.connect_backoff.reset()
        self.space_backoff.reset()
        if ack.outcome is p.Outcome.DUPLICATE:
            log.info("%s is already on the receiver as %s", job.relpath, ack.stored_path)
            return
        beside = (
            f" as {ack.stored_path} (beside a different file)"
            if ack.outcome is p.Outcome.KEPT_BESIDE
            else ""
        )
        speed = rate(job.size, time.monotonic() - job.started)
        log.info("sent %s (%s, %s)%s", job.relpath, human_size(job.size), speed, beside)

    def _refused(self, job: FileJob, nack: p.Nack) -> None:
        job.attempts += 1
        if not nack.retryable or (self.once and job.attempts >= ONCE_FILE_ATTEMPTS):
            log.error(
                "cannot deliver %s: %s: %s (not retried)",
                job.relpath,
                nack.reason.name.lower(),
                nack.message,
            )
            self.failed.append((job, f"{nack.reason.name.lower()}: {nack.message}"))
        elif nack.reason is p.NackReason.DIGEST_MISMATCH:
            log.warning(
                "%s: digest mismatch on the receiver (changed while sending, or corrupted "
                "in flight); sending it again from the start",
                job.relpath,
            )
            self.pending.appendleft(job)
        elif nack.reason is p.NackReason.NO_SPACE:
            delay = self.space_backoff.next_delay()
            log.warning("receiver has no space for %s; pausing %.1f s", job.relpath, delay)
            self.paused_until = time.monotonic() + delay
            self.pending.appendleft(job)
        else:
            delay = Backoff(self.config.retry_initial, self.config.retry_max)
            delay.failures = job.attempts - 1
            seconds = delay.next_delay()
            log.warning(
                "receiver refused %s for now (%s: %s); retrying in %.1f s",
                job.relpath,
                nack.reason.name.lower(),
                nack.message,
                seconds,
            )
            heapq.heappush(self.delayed, (time.monotonic() + seconds, next(self._tiebreak), job))

    def _maybe_disconnect(self, now: float) -> None:
        if self.session and now - self.last_activity > IDLE_DISCONNECT_SECONDS:
            self.session.close()
            self.session = None

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def _where(config: SenderConfig) -> str:
    return f"receiver {config.receiver.host}:{config.receiver.port}"


def run(config: SenderConfig, once: bool) -> int:
    """`scanxfer send`: deliver what is there (--once) or keep watching."""
    delivery = Delivery(config, once)
    _install_signal_handlers(delivery.stop)
    if once:
        return _run_once(delivery)
    return _run_daemon(delivery)


def _install_signal_handlers(stop: threading.Event) -> None:
    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def _run_once(delivery: Delivery) -> int:
    config = delivery.config
    if not config.watch_dir.is_dir():
        log.error(
            "watch directory %s does not exist; pass --watch DIR or set watch_dir", config.watch_dir
        )
        return EXIT_USAGE
    found = scan(config.watch_dir, config.patterns, config.ignore)
    for relpath in found:
        if npy_complete(config.watch_dir / relpath):
            delivery.add(relpath.as_posix())
        else:
            log.warning("skipping %s: not a complete .npy file yet (still being written?)", relpath)
    total = len(delivery.pending)
    log.info(
        "sending %d files from %s to %s:%d",
        total,
        config.watch_dir,
        config.receiver.host,
        config.receiver.port,
    )
    while not delivery.finished:
        delivery.step()
    delivery.close()
    return _once_result(delivery, total)


def _once_result(delivery: Delivery, total: int) -> int:
    if delivery.unreachable:
        log.error(
            "gave up: %s; %d of %d files delivered", delivery.unreachable, delivery.delivered, total
        )
        return EXIT_UNREACHABLE
    if delivery.failed or delivery.delivered < total:
        log.error(
            "%d of %d files delivered; not delivered: %s",
            delivery.delivered,
            total,
            ", ".join(job.relpath for job, _ in delivery.failed[:10]) or "interrupted",
        )
        return EXIT_FAILED
    log.info("all %d files delivered and stored durably", total)
    return EXIT_OK


def _run_daemon(delivery: Delivery) -> int:
    config = delivery.config
    config.watch_dir.mkdir(parents=True, exist_ok=True)
    watcher = CompletionWatcher(
        config.watch_dir, config.patterns, config.ignore, config.settle_seconds, config.watch_method
    )
    with watcher:
        log.info(
            "watching %s, delivering to %s:%d",
            config.watch_dir,
            config.receiver.host,
            config.receiver.port,
        )
        while not delivery.stop.is_set():
            # Block on the watcher only when there is nothing else to do.
            wait = 0.5 if delivery.finished else 0.0
            while (relpath := watcher.get(timeout=wait)) is not None:
                delivery.add(relpath.as_posix())
                wait = 0.0
            delivery.step()
    delivery.close()
    log.info("stopped; %d files delivered", delivery.delivered)
    return EXIT_OK
