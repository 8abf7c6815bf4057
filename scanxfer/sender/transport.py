"""The seam between the sender's policy and the wire: what carries files to a receiver.

`delivery.Delivery` decides what to offer, when to retry and what to journal; a `Transport`
only moves offered files and reports each one's answer.  Two kinds exist: the scanxfer
session (`session.SCANXFER`) and the prototype mode (`prototype.PROTOTYPE`, `send --legacy`).
A new way to deliver files (another protocol, object storage) implements `Transport`,
describes itself with a `TransportKind`, and is added to `sender.TRANSPORTS`; the queue,
retries, journal and hand-off then work for it unchanged.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from .. import protocol as p
from ..config import SenderConfig
from .job import FileJob

SEND_SLICE = 1 << 23  # sendfile per call: a sign of life for the watchdog at least every 8 MiB


class ConnectionLost(Exception):
    """The transport is unusable; its files go back to the queue."""


class AuthenticationFailed(ConnectionLost):
    """The receiver and this sender do not recognise each other; retrying will not fix it."""


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


# Opens a transport to the configured receiver; `alive` is called during long waits (the
# watchdog's sign of life).  Raises ConnectionLost, or AuthenticationFailed.
Opener = Callable[[SenderConfig, Callable[[], None]], Transport]


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
    sock: socket.socket, handle: BinaryIO, offset: int, length: int, alive: Callable[[], None]
) -> int:
    """socket.sendfile, a slice at a time, calling `alive` between slices: a big scan
    can take longer to send than the watchdog waits for a sign of life."""
    sent = 0
    while sent < length:
        count = sock.sendfile(handle, offset + sent, min(SEND_SLICE, length - sent))
        alive()
        if count == 0:
            break  # the file shrank: the caller reports it
        sent += count
    return sent
