"""Free space kept with several files in flight: the receiver-wide reservations.

The intake runs in-process as in test_intake (a sans-IO sender joined in memory, a real
Store), several connections sharing one `Services` as they do in the receiver.  The disk is
a fake of a given capacity whose free space is what the files under the store take from
it, read through the store's `free_bytes` seam, so a small disk needs no mount.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from scanxfer import protocol as p
from scanxfer.receiver import Services, Stats
from scanxfer.receiver.admission import Limits, NoRoom, Reservation, Reservations, TooLarge
from scanxfer.receiver.gate import Gate
from scanxfer.store import Store, StoreLimits
from tests.unit.test_intake import ASK, MTIME_NS, Wire, deferred, digest, receiver_config

KIB = 1024
SCAN = bytes(range(256)) * 80  # 20 KiB
RESERVE = 16 * KIB


class SmallDisk:
    """A disk of `capacity` bytes holding the files under `root`: the store's free space."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root, self.capacity = root, capacity

    def free(self) -> int:
        # The partial folder lies inside the incoming one: its files are counted here too.
        files = [path for path in self.root.rglob("*") if path.is_file()]
        return self.capacity - sum(path.stat().st_size for path in files)


class Receiver:
    """One receiver's store and services on a small disk, and its connections."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capacity: int) -> None:
        self.config = receiver_config(tmp_path, min_free_space=str(RESERVE))
        limits = StoreLimits(self.config.max_path_length, self.config.max_path_depth)
        self.store = Store(self.config.incoming_dir, self.config.partial_dir, limits)
        self.disk = SmallDisk(self.store.incoming_dir, capacity)
        monkeypatch.setattr(self.store, "free_bytes", self.disk.free)
        self.services = Services(self.store, Stats(), Gate(self.config))

    def connect(self, options: dict[str, bytes] | None = None) -> Wire:
        return Wire(self.config, self.store, [], options, services=self.services)

    @property
    def promised(self) -> int:
        return self.services.reservations.promised()


def offer(file_id: int, path: str, data: bytes = SCAN) -> p.Offer:
    return p.Offer(file_id, path, len(data), MTIME_NS, digest(data))


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Receiver:
    return Receiver(tmp_path, monkeypatch, capacity=64 * KIB)


def test_three_files_in_flight_never_take_free_space_below_min_free_space(
    receiver: Receiver,
) -> None:
    wires = [receiver.connect() for _ in range(3)]
    assert wires[0].send(offer(1, "a.npy")) == [p.Ready(1, 0)]
    assert wires[1].send(offer(1, "b.npy")) == [p.Ready(1, 0)]
    # 64 KiB free now, but 40 of them are promised to the two files admitted before.
    [nack] = wires[2].send(offer(1, "c.npy"))
    assert isinstance(nack, p.Nack)
    assert (nack.reason, nack.retryable) == (p.NackReason.NO_SPACE, True)
    assert nack.message == (
        "20.0 KiB do not fit: 64.0 KiB free, of which 40.0 KiB promised to files in flight, "
        "16.0 KiB stay free (min_free_space)"
    )
    # Their bytes arrive interleaved, a slice at a time: the reserve is never touched.
    for start in range(0, len(SCAN), 4 * KIB):
        for wire in wires[:2]:
            header = [p.DataHeader(1, 0, len(SCAN))] if start == 0 else []
            wire.send(*header, SCAN[start : start + 4 * KIB])
            assert receiver.disk.free() >= RESERVE
            # Arrived bytes leave the promise as the disk starts to show them.
            assert receiver.disk.free() - receiver.promised == 64 * KIB - 40 * KIB
    for name in ("a.npy", "b.npy"):
        assert (receiver.store.incoming_dir / name).read_bytes() == SCAN
    assert receiver.promised == 0
    [nack] = wires[2].send(offer(2, "c.npy"))
    assert isinstance(nack, p.Nack) and nack.reason is p.NackReason.NO_SPACE
    (receiver.store.incoming_dir / "a.npy").unlink()  # the administrator makes room
    assert wires[2].send(offer(3, "c.npy")) == [p.Ready(3, 0)]


def test_an_acknowledged_file_gives_back_its_promise(receiver: Receiver) -> None:
    wire = receiver.connect()
    assert wire.send(offer(1, "a.npy")) == [p.Ready(1, 0)]
    assert receiver.promised == len(SCAN)
    answers = wire.send(p.DataHeader(1, 0, len(SCAN)), SCAN)
    assert answers == [p.Ack(1, p.Outcome.STORED, "a.npy")]
    assert receiver.promised == 0


def test_a_refused_file_gives_back_its_promise(receiver: Receiver) -> None:
    wire = receiver.connect()
    other = SCAN[:-1] + b"!"
    assert wire.send(offer(1, "a.npy")) == [p.Ready(1, 0)]
    [nack] = wire.send(p.DataHeader(1, 0, len(other)), other)
    assert isinstance(nack, p.Nack) and nack.reason is p.NackReason.DIGEST_MISMATCH
    assert receiver.promised == 0
    # The space is there again for the next offer (two would not fit with the first kept).
    assert wire.send(offer(2, "b.npy")) == [p.Ready(2, 0)]
    assert wire.send(offer(3, "c.npy")) == [p.Ready(3, 0)]


def test_a_withdrawn_file_gives_back_its_promise(receiver: Receiver) -> None:
    wire = receiver.connect({p.CANCEL_OPTION: p.CANCEL_ON})
    assert wire.send(offer(1, "a.npy")) == [p.Ready(1, 0)]
    assert wire.send(p.Cancel(1)) == []
    assert receiver.promised == 0


def test_a_duplicate_told_by_its_digest_gives_back_its_promise(receiver: Receiver) -> None:
    first = receiver.connect(ASK)
    first.send(offer(1, "a.npy"))
    first.send(p.DataHeader(1, 0, len(SCAN)), SCAN)
    wire = receiver.connect(ASK)
    assert wire.send(deferred(1, SCAN, "a.npy")) == [p.AskDigest(1)]
    assert receiver.promised == len(SCAN)
    assert wire.send(p.Digest(1, digest(SCAN))) == [p.Ack(1, p.Outcome.DUPLICATE, "a.npy")]
    assert receiver.promised == 0


def test_a_lost_connection_gives_back_its_promise_and_a_resume_needs_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Room for half a scan above the reserve once its first half is held (and a little for
    # the partial's name): a whole scan would not fit, the rest does.
    half = len(SCAN) // 2
    receiver = Receiver(tmp_path, monkeypatch, capacity=len(SCAN) + RESERVE + KIB)
    first = receiver.connect()
    assert first.send(offer(1, "a.npy")) == [p.Ready(1, 0)]
    assert first.send(p.DataHeader(1, 0, len(SCAN)), SCAN[:half]) == []
    assert receiver.promised == len(SCAN) - half
    first.intake.finish()  # the connection is gone; its partial stays for resume
    assert receiver.promised == 0
    wire = receiver.connect()
    assert wire.send(offer(1, "a.npy")) == [p.Ready(1, half)]
    assert receiver.promised == len(SCAN) - half
    answers = wire.send(p.DataHeader(1, half, len(SCAN) - half), SCAN[half:])
    assert answers == [p.Ack(1, p.Outcome.STORED, "a.npy")]
    assert RESERVE <= receiver.disk.free() <= RESERVE + KIB


def test_a_file_refused_for_room_keeps_no_new_partial(receiver: Receiver) -> None:
    big = SCAN * 3  # 60 KiB: more than 64 KiB less the reserve
    wire = receiver.connect()
    [nack] = wire.send(offer(1, "big.npy", big))
    assert isinstance(nack, p.Nack) and nack.reason is p.NackReason.NO_SPACE
    assert list(receiver.store.partial_dir.iterdir()) == []
    assert receiver.promised == 0


def test_reservations_from_many_threads_never_promise_more_than_is_free() -> None:
    reservations = Reservations()
    limits = Limits(max_file_size=100, min_free_space=100)
    admitted: list[Reservation] = []
    refusals: list[NoRoom] = []
    lock = threading.Lock()

    def offer_many() -> None:
        for _ in range(50):
            verdict = reservations.admit(10, 0, limits, lambda: 1000)
            with lock:
                if isinstance(verdict, Reservation):
                    admitted.append(verdict)
                else:
                    assert isinstance(verdict, NoRoom)
                    refusals.append(verdict)

    threads = [threading.Thread(target=offer_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 90  # (1000 - 100) / 10
    assert reservations.promised() == 900
    admitted[0].release()
    admitted[0].release()  # twice is harmless
    assert reservations.promised() == 890


def test_an_absurd_size_is_refused_without_reading_the_free_space() -> None:
    def unreadable() -> int:
        raise AssertionError("free space read for a file that can never fit")

    verdict = Reservations().admit(101, 0, Limits(100, 0), unreadable)
    assert verdict == TooLarge(101, 100)
