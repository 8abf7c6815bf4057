"""The sender's view of one file: read as the version checked, hashed whatever its position."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import xxhash

from scanxfer.sender.job import BackgroundDigest, FileJob, NotReady, file_digest
from scanxfer.sender.transport import Pulse, Stopped
from scanxfer.watcher import Version


def scan(tmp_path: Path, size: int = 3 << 20) -> Path:
    path = tmp_path / "scan.npy"
    path.write_bytes(os.urandom(size))
    return path


def test_the_digest_does_not_depend_on_the_descriptor_position(tmp_path: Path) -> None:
    """socket.sendfile moves the position of the descriptor the hash thread shares."""
    path = scan(tmp_path)
    with path.open("rb") as handle:
        handle.seek(12345)
        assert (
            file_digest(handle.fileno(), lambda: None)
            == xxhash.xxh3_128(path.read_bytes()).digest()
        )


def test_the_hash_thread_is_not_disturbed_by_seeks_on_the_sending_handle(tmp_path: Path) -> None:
    path = scan(tmp_path, 64 << 20)
    with path.open("rb") as handle:
        hashing = BackgroundDigest(handle, "scan.npy")
        for offset in range(0, 64 << 20, 1 << 16):  # what sendfile does after each slice
            handle.seek(offset)
        digest = hashing.result(lambda: None)
    assert digest == xxhash.xxh3_128(path.read_bytes()).digest()


def test_a_file_is_offered_only_as_the_version_it_was_queued_as(tmp_path: Path) -> None:
    path = scan(tmp_path)
    queued = Version.of(path.stat())
    with path.open("r+b") as writer:
        writer.write(b"x")
    job = FileJob("scan.npy", path, queued)
    with pytest.raises(NotReady):
        job.prepare()
    assert job.handle is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("append", "changed while being sent"),
        ("remove", "was removed while being sent"),
        ("replace", "was replaced while being sent"),
    ],
)
def test_a_change_while_sending_is_named(tmp_path: Path, change: str, reason: str) -> None:
    path = scan(tmp_path)
    job = FileJob("scan.npy", path, Version.of(path.stat()))
    job.prepare()
    try:
        assert job.changed() == ""
        if change == "append":
            with path.open("ab") as writer:
                writer.write(b"more")
        elif change == "remove":
            path.unlink()
        else:
            other = tmp_path / "other"
            other.write_bytes(b"new")
            other.rename(path)
        assert job.changed() == reason
    finally:
        job.release()


def test_a_stop_ends_the_hashing_between_two_reads(tmp_path: Path) -> None:
    path = scan(tmp_path)  # below DEFER_DIGEST_FROM: hashed before it is offered
    job = FileJob("scan.npy", path, Version.of(path.stat()))
    stop = threading.Event()
    reads: list[int] = []

    def alive() -> None:
        reads.append(1)
        if len(reads) == 2:
            stop.set()  # as SIGINT's handler does

    with pytest.raises(Stopped):
        job.prepare(Pulse(alive, stop))
    assert len(reads) == 2  # of the file's 3 reads
    assert job.handle is None and job.digest == b""


def test_a_stop_while_waiting_for_a_deferred_digest_is_raised(tmp_path: Path) -> None:
    path = scan(tmp_path, 64 << 20)
    stop = threading.Event()
    stop.set()
    with path.open("rb") as handle:
        hashing = BackgroundDigest(handle, "scan.npy")
        with pytest.raises(Stopped):
            hashing.result(Pulse(stop=stop))


def test_a_stop_asked_before_the_digest_is_read_is_raised_even_when_the_hash_is_done(
    tmp_path: Path,
) -> None:
    """The answer must not depend on whether the hash thread won the race."""
    path = scan(tmp_path, 1 << 20)
    stop = threading.Event()
    with path.open("rb") as handle:
        hashing = BackgroundDigest(handle, "scan.npy")
        assert hashing.result(Pulse(stop=stop)) == xxhash.xxh3_128(path.read_bytes()).digest()
        stop.set()
        with pytest.raises(Stopped):
            hashing.result(Pulse(stop=stop))
