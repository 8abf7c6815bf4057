"""The prototype transport, `scanxfer send --legacy`: push files into an old prototype receiver.

The prototype's wire format is one connection per file: an 8-byte big-endian length, then the
file's bytes.  It sends no acknowledgement, so the best confirmation there is comes after the
last byte: we shut down our side and wait for the receiver to close its side, which the
prototype does once it has read the whole file.  That proves the bytes were read, not that they
were stored durably; a file whose connection ends any other way is sent again, so the prototype
may receive it twice but never not at all.  No name, checksum, key or TLS is involved.

`PrototypeTransport` is a `transport.Transport`, so `delivery.Delivery` keeps its queue,
retries and journal unchanged: a file counts as delivered once its connection closed
cleanly, and is not sent again after a restart.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time

from .. import protocol as p
from ..config import SenderConfig
from ..protocol.prototype import encode_length
from .job import FileChanged, FileJob
from .transport import (
    CHECK_SECONDS,
    Answer,
    ConnectionLost,
    Pulse,
    TransportKind,
    connect,
    send_in_slices,
    where,
)

log = logging.getLogger("scanxfer.sender")

# What the journal and `scanxfer status` show as the stored name: the prototype picks it
# (scan_<its epoch ms>.npy) and never tells.
STORED_PATH = "(named by the prototype receiver)"
RECV_CHUNK = 4096


class PrototypeTransport:
    """Files to a prototype receiver, one at a time, each on its own connection.

    Nothing is connected until a file is sent: a connection opened and left unused would
    reach the prototype as a file cut short.
    """

    def __init__(self, config: SenderConfig, alive: Pulse | None = None) -> None:
        self.config, self.alive = config, alive or Pulse()
        self.offered: dict[int, FileJob] = {}
        self._ids = itertools.count(1)

    @property
    def free_slots(self) -> int:
        # One at a time: the prototype receiver serves one connection at a time.
        return 0 if self.offered else 1

    @property
    def in_flight(self) -> int:
        return len(self.offered)

    def offer(self, job: FileJob) -> None:
        self.offered[next(self._ids)] = job

    def step(self, wait: float) -> list[tuple[FileJob, Answer]]:
        """Send the file in flight, if any; an answer means its connection closed cleanly."""
        if not self.offered:
            return []
        file_id, job = next(iter(self.offered.items()))
        self._send(job)
        del self.offered[file_id]
        return [(job, p.Ack(file_id, p.Outcome.STORED, STORED_PATH))]

    def requeue(self) -> list[FileJob]:
        jobs = list(self.offered.values())
        self.offered.clear()
        return jobs

    def close(self) -> None:
        """Nothing stays open between files."""

    def _send(self, job: FileJob) -> None:
        job.started = time.monotonic()
        assert job.handle is not None  # opened and checked by FileJob.prepare
        # Checked before connecting: the prototype would store a changed file as it is.
        if why := job.changed():
            raise FileChanged(f"{job.relpath} {why}")
        with self._connect() as sock:
            self._stream(sock, job)
            self._await_close(sock, job)

    def _connect(self) -> socket.socket:
        return connect(self.config, self.alive)

    def _stream(self, sock: socket.socket, job: FileJob) -> None:
        try:
            sock.sendall(encode_length(job.size))
            sent = send_in_slices(sock, job, 0, job.size, self.alive)
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            raise ConnectionLost(f"connection lost while sending {job.relpath}: {error}") from error
        if sent != job.size:
            raise FileChanged(f"{job.relpath} shrank while being sent ({sent} of {job.size} bytes)")

    def _await_close(self, sock: socket.socket, job: FileJob) -> None:
        """Wait for the receiver to close its side: the only sign that it read everything.

        A reset is not taken as that sign: Linux resets a connection closed with bytes still
        unread, so it may mean the file was cut short.
        """
        deadline = time.monotonic() + self.config.stall_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(min(remaining, CHECK_SECONDS))
            try:
                if not sock.recv(RECV_CHUNK):
                    return
            except TimeoutError:
                self.alive()  # a stop request ends the wait
                continue
            except OSError as error:
                raise ConnectionLost(
                    f"{where(self.config)} reset the connection after {job.relpath} was sent "
                    f"({error}), so it may not have stored it; sending it again"
                ) from error
        raise ConnectionLost(
            f"{where(self.config)} did not close the connection within stall_timeout after "
            f"{job.relpath} was sent; sending it again (it may arrive twice)"
        )


PROTOTYPE = TransportKind(
    name="prototype",
    # Opening connects nothing: each file opens its own connection when it is sent.
    open=PrototypeTransport,
    needs_key=False,  # the prototype knows no keys
    done_message="all %d files sent; the prototype receiver confirms nothing more",
)
