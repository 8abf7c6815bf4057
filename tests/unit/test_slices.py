"""A payload sent a slice at a time (`transport.send_in_slices`), over a real socket pair:
every byte counted, a resume offset reported, and a stop noticed between two slices."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanxfer.sender.job import FileJob
from scanxfer.sender.transport import Pulse, Stopped, send_in_slices
from scanxfer.watcher import Version

SIZE = 4 << 20


class Counter:
    """A `Meter` that records what it is told; `stop_after` slices, it asks for a stop."""

    def __init__(self, stop: threading.Event, stop_after: int | None = None) -> None:
        self.stop, self.stop_after = stop, stop_after
        self.resumed_at: list[int] = []
        self.slices: list[int] = []

    def resumed(self, relpath: str, offset: int) -> None:
        self.resumed_at.append(offset)

    def sent(self, relpath: str, count: int) -> None:
        self.slices.append(count)
        if len(self.slices) == self.stop_after:
            self.stop.set()  # as SIGINT's handler does


@pytest.fixture
def job(tmp_path: Path) -> Iterator[FileJob]:
    path = tmp_path / "big.npy"
    path.write_bytes(os.urandom(SIZE))
    job = FileJob("big.npy", path, Version.of(path.stat()))
    job.handle = path.open("rb")
    yield job
    job.release()


@pytest.fixture
def link() -> Iterator[tuple[socket.socket, bytearray]]:
    """A connected pair: the sending end (with a timeout, as the transports set), and what
    a thread reads from the other end."""
    sending, receiving = socket.socketpair()
    sending.settimeout(5)
    received = bytearray()

    def drain() -> None:
        while chunk := receiving.recv(1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    yield sending, received
    sending.close()
    reader.join(5)
    receiving.close()


def test_every_byte_is_counted_from_the_resume_offset(
    job: FileJob, link: tuple[socket.socket, bytearray]
) -> None:
    sending, received = link
    stop = threading.Event()
    counter = Counter(stop)
    offset = 1 << 20
    assert send_in_slices(sending, job, offset, SIZE - offset, Pulse(stop=stop, meter=counter)) == (
        SIZE - offset
    )
    sending.shutdown(socket.SHUT_WR)
    assert counter.resumed_at == [offset]
    assert sum(counter.slices) == SIZE - offset
    deadline = time.monotonic() + 30
    while len(received) < SIZE - offset and time.monotonic() < deadline:
        time.sleep(0.01)
    assert received == job.path.read_bytes()[offset:]


def test_a_stop_is_noticed_after_the_slice_in_progress(
    job: FileJob, link: tuple[socket.socket, bytearray]
) -> None:
    sending, _ = link
    stop = threading.Event()
    counter = Counter(stop, stop_after=1)
    # 10 MB/s: slices of 1 MB, so the 4 MiB file takes several.
    pulse = Pulse(stop=stop, meter=counter, max_rate=10_000_000)
    with pytest.raises(Stopped):
        send_in_slices(sending, job, 0, SIZE, pulse)
    assert counter.slices == [1_000_000]
    # Closing now resets the connection: queued bytes are not trickled out after a stop.
    linger = struct.unpack("ii", sending.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
    assert linger == (1, 0)
