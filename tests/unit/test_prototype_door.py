"""The prototype door in-process: a real Store, real sockets, a selector loop like the server's.

Raw Python sockets play the prototype sender here, so each test can cut the wire format at the
byte it needs; tests/integration/test_legacy.py drives the real door with netcat.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scanxfer.config import ReceiverConfig, load_receiver_config
from scanxfer.receiver.admission import Limits, Reservation, Reservations
from scanxfer.receiver.after_store import AfterStore, ReceivedFile
from scanxfer.receiver.doors import RateLimitedWarning
from scanxfer.receiver.prototype_door import PrototypeDoor, _allowed
from scanxfer.store import PARTIAL_FOLDER, Outcome, Store, StoreLimits

DOOR_LOG = "scanxfer.receiver.prototype_door"

# "Give up" bound for waits that normally end in milliseconds; never an assertion about speed.
GIVE_UP_SECONDS = 30
SCAN_NAME = re.compile(r"scan_\d{13}(~\d+)?\.npy")
MIB = 1 << 20


def npy_bytes(shape: tuple[int, ...] = (64, 64), seed: int = 1) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(seed).integers(0, 2**16, size=shape, dtype=np.uint16))
    return buffer.getvalue()


def framed(*files: bytes) -> bytes:
    """The prototype's wire format: each file as an 8-byte big-endian length, then its bytes."""
    return b"".join(struct.pack(">Q", len(data)) + data for data in files)


class Recorder:
    """Stands in for receiver.Stats: the door only calls stored()."""

    def __init__(self) -> None:
        self.files: list[tuple[str, int]] = []

    def stored(self, path: str, size: int) -> None:
        self.files.append((path, size))


class DoorLoop:
    """A PrototypeDoor driven by a selector loop in a thread, as the receiver's main loop does."""

    def __init__(
        self,
        config: ReceiverConfig,
        store: Store,
        hooks: list[AfterStore] | None = None,
        reservations: Reservations | None = None,
    ) -> None:
        self.stats = Recorder()
        self.stopping = threading.Event()
        self.received: list[ReceivedFile] = []
        hooks = [self.after_store] if hooks is None else [*hooks, self.after_store]
        self.door = PrototypeDoor(config, store, self.stats, self.stopping, hooks, reservations)
        self.port: int = self.door.listener.getsockname()[1]
        self.store = store
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.door.listener, selectors.EVENT_READ)
            while not self._quit.is_set():
                if selector.select(timeout=0.05):
                    self.door.accept()

    def after_store(self, received: ReceivedFile) -> None:
        self.received.append(received)

    def close(self) -> None:
        self._quit.set()
        self._thread.join()
        self.door.close()

    def stored(self) -> dict[str, bytes]:
        incoming = self.store.incoming_dir
        return {
            path.name: path.read_bytes()
            for path in incoming.iterdir()
            if path.name != PARTIAL_FOLDER
        }

    def partials(self) -> list[str]:
        return os.listdir(self.store.partial_dir)


def write_config(tmp_path: Path, **settings: str) -> ReceiverConfig:
    values = {
        "state_dir": str(tmp_path / "state"),
        "legacy_listen": "127.0.0.1:0",
        "legacy_allow": "['127.0.0.1']",
        "min_free_space": "0",
        **settings,
    }
    path = tmp_path / "receiver.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    return load_receiver_config(path)


def open_door(
    tmp_path: Path,
    hooks: list[AfterStore] | None = None,
    reservations: Reservations | None = None,
    **settings: str,
) -> DoorLoop:
    config = write_config(tmp_path, **settings)
    limits = StoreLimits(config.max_path_length, config.max_path_depth)
    store = Store(config.incoming_dir, config.partial_dir, limits)
    return DoorLoop(config, store, hooks, reservations)


@pytest.fixture
def door(tmp_path: Path) -> Iterator[DoorLoop]:
    opened = open_door(tmp_path, idle_timeout="1s", handshake_timeout="1s")
    yield opened
    opened.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP_SECONDS)
    sock.settimeout(GIVE_UP_SECONDS)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Wait for the door to end the connection (FIN or reset); False if it kept it open."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def deliver(port: int, data: bytes) -> None:
    """Send like a prototype sender, then wait until the door has finished with us."""
    with connect(port) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the door closed (or reset) first: it refused something, as some tests want
        assert closed_by_peer(sock)


def test_a_file_is_stored_under_the_prototype_name(
    door: DoorLoop, caplog: pytest.LogCaptureFixture
) -> None:
    data = npy_bytes()
    with caplog.at_level(logging.INFO, DOOR_LOG):
        deliver(door.port, framed(data))
    stored = door.stored()
    assert list(stored.values()) == [data]
    [name] = stored
    assert SCAN_NAME.fullmatch(name)
    assert door.stats.files == [(name, len(data))]
    assert door.partials() == []
    assert re.search(rf"127\.0\.0\.1:\d+: received prototype file {name} \(", caplog.text)


def test_the_door_warns_that_it_is_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, DOOR_LOG):
        opened = open_door(tmp_path, legacy_allow="['127.0.0.1', '10.0.0.0/24']")
    opened.close()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"127.0.0.1:{opened.port}" in record.message
    assert "UNAUTHENTICATED and UNENCRYPTED" in record.message
    assert "127.0.0.1/32, 10.0.0.0/24" in record.message
    assert "legacy_listen: null" in record.message


def test_a_length_sliced_into_single_bytes_is_read_whole(door: DoorLoop) -> None:
    data = npy_bytes()
    with connect(door.port) as sock:
        for byte in framed(data)[:8]:
            sock.sendall(bytes([byte]))
            time.sleep(0.01)  # separate segments, so the door's reads come back short
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert closed_by_peer(sock)
    assert list(door.stored().values()) == [data]


def test_several_files_on_one_connection(door: DoorLoop) -> None:
    files = [npy_bytes((n, 100), seed=n) for n in (1, 50, 300)]
    deliver(door.port, framed(*files))
    stored = door.stored()
    assert sorted(stored.values()) == sorted(files)
    assert all(SCAN_NAME.fullmatch(name) for name in stored)


def test_the_after_store_hook_sees_each_stored_file_once(door: DoorLoop) -> None:
    files = [npy_bytes((n, 100), seed=n) for n in (1, 50, 300)]
    deliver(door.port, framed(*files))
    incoming = door.store.incoming_dir
    assert sorted(r.name for r in door.received) == sorted(door.stored())
    for received in door.received:
        assert received.path == incoming / received.name
        assert received.size == len(received.path.read_bytes())
        # The prototype's wire carries neither a digest nor a sender's name.
        assert (received.digest, received.sender) == (None, None)
        assert received.peer.startswith("127.0.0.1:")


def test_a_failing_hook_costs_neither_the_file_nor_the_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(received: ReceivedFile) -> None:
        raise RuntimeError("the forwarder is down")

    door = open_door(tmp_path, hooks=[broken])
    files = [npy_bytes(seed=1), npy_bytes(seed=2)]
    try:
        with caplog.at_level(logging.ERROR, "scanxfer.receiver"):
            deliver(door.port, framed(*files))
    finally:
        door.close()
    # Both files of the connection stored, and the next hook still told of each.
    assert sorted(door.stored().values()) == sorted(files)
    assert sorted(r.name for r in door.received) == sorted(door.stored())
    failures = [r for r in caplog.records if "after-store hook" in r.message]
    assert len(failures) == 2
    assert "broken failed on scan_" in failures[0].message
    assert failures[0].exc_info is not None


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not a numpy file at all" * 10, "not a .npy file"),
        (npy_bytes()[:-1], "header accounts for 8320 bytes, but 8319 were announced"),
        (npy_bytes() + b"x", "header accounts for 8320 bytes, but 8321 were announced"),
        (b"", "not a .npy file"),
    ],
)
def test_an_invalid_npy_file_is_dropped(
    door: DoorLoop, caplog: pytest.LogCaptureFixture, payload: bytes, problem: str
) -> None:
    with caplog.at_level(logging.ERROR, DOOR_LOG):
        deliver(door.port, framed(payload, npy_bytes()))
    # Nothing of it is stored, and the file behind it on that connection is not trusted either.
    assert door.stored() == {}
    assert door.partials() == []
    assert door.received == []
    assert re.search(
        rf"127\.0\.0\.1:\d+: refused a prototype file: .*{re.escape(problem)}", caplog.text
    )


def test_a_huge_length_is_refused_before_any_payload(
    door: DoorLoop, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, DOOR_LOG), connect(door.port) as sock:
        sock.sendall(struct.pack(">Q", 2**63))
        assert closed_by_peer(sock)
    assert f"refused a prototype file of {2**63} bytes: more than max_file_size" in caplog.text
    assert door.stored() == {}
    assert door.partials() == []


def test_a_file_that_would_eat_into_min_free_space_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    door = open_door(tmp_path, min_free_space="1000TiB")
    try:
        with caplog.at_level(logging.ERROR, DOOR_LOG):
            deliver(door.port, framed(npy_bytes()))
    finally:
        door.close()
    assert "min_free_space is 1000.0 TiB; free some space on the receiver" in caplog.text
    assert door.stored() == {}


def test_files_in_flight_on_the_other_door_count_against_the_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reservations = Reservations()  # shared with the scanxfer door, as in the receiver
    door = open_door(tmp_path, reservations=reservations, min_free_space="1MiB")
    monkeypatch.setattr(door.store, "free_bytes", lambda: 3 * MIB)
    limits = Limits(max_file_size=3 * MIB, min_free_space=MIB)
    held = reservations.admit(2 * MIB, 0, limits, door.store.free_bytes)
    assert isinstance(held, Reservation)  # a file on the scanxfer door takes the room
    data = npy_bytes()
    try:
        with caplog.at_level(logging.ERROR, DOOR_LOG):
            deliver(door.port, framed(data))
        assert "(2.0 MiB of it promised to files in flight)" in caplog.text
        assert door.stored() == {}
        held.release()
        deliver(door.port, framed(data))
    finally:
        door.close()
    assert list(door.stored().values()) == [data]
    assert reservations.promised() == 0


def test_a_trickle_is_cut_off(door: DoorLoop, caplog: pytest.LogCaptureFixture) -> None:
    data = npy_bytes()
    with caplog.at_level(logging.WARNING, DOOR_LOG), connect(door.port) as sock:
        sock.sendall(framed(data)[:100])
        sock.settimeout(0.1)
        # Every byte arrives well within idle_timeout (1 s), but the file never gets anywhere.
        for byte in data[92:400]:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if closed_by_peer(sock):
                break
        else:
            pytest.fail("the door kept a trickling connection open")
    assert "too slow (less than 64.0 KiB within idle_timeout" in caplog.text
    assert "the file being received was dropped" in caplog.text
    assert door.stored() == {}
    assert door.partials() == []


def test_a_silent_connection_is_closed_after_the_handshake_timeout(door: DoorLoop) -> None:
    with connect(door.port) as sock:
        assert closed_by_peer(sock)


def test_a_connection_ending_mid_file_drops_the_partial(
    door: DoorLoop, caplog: pytest.LogCaptureFixture
) -> None:
    data = npy_bytes()
    with caplog.at_level(logging.WARNING, DOOR_LOG):
        deliver(door.port, framed(data)[:-100])
    assert re.search(
        r"closed after 8220 of 8320 bytes; the file being received was dropped", caplog.text
    )
    assert door.stored() == {}
    assert door.partials() == []


def test_a_peer_outside_legacy_allow_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    door = open_door(tmp_path, legacy_allow="['127.0.0.2/32']")
    try:
        with caplog.at_level(logging.WARNING, DOOR_LOG):
            for _ in range(3):
                deliver(door.port, framed(npy_bytes()))
    finally:
        door.close()
    assert door.stored() == {}
    # One line for the three refusals: a sender retrying in a loop must not flood the journal.
    refusals = [r.message for r in caplog.records if "not in legacy_allow" in r.message]
    assert len(refusals) == 1
    assert refusals[0].startswith("127.0.0.1:")


def test_connections_beyond_max_connections_are_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    door = open_door(tmp_path, max_connections="1", handshake_timeout="60s")
    try:
        with caplog.at_level(logging.WARNING, DOOR_LOG), connect(door.port) as first:
            first.sendall(b"\0\0")  # holds the only slot, mid-length
            deliver(door.port, framed(npy_bytes()))
            assert door.stored() == {}
            first.sendall(framed(npy_bytes())[2:])
            first.shutdown(socket.SHUT_WR)
            assert closed_by_peer(first)
    finally:
        door.close()
    assert "already 1 connections (max_connections)" in caplog.text
    assert len(door.stored()) == 1


def test_close_ends_open_connections_and_drops_their_partials(door: DoorLoop) -> None:
    data = npy_bytes()
    with connect(door.port) as sock:
        sock.sendall(framed(data)[:-10])
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not door.partials() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert door.partials()
        door.close()
        assert closed_by_peer(sock)
    assert door.partials() == []
    assert door.stored() == {}


def test_no_space_while_writing_drops_the_file_and_the_door_lives(
    door: DoorLoop, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    with caplog.at_level(logging.ERROR, DOOR_LOG):
        with monkeypatch.context() as patched:
            patched.setattr(os, "write", full)
            deliver(door.port, framed(npy_bytes()))
        assert "prototype file not stored: no space left on the receiver" in caplog.text
        assert door.stored() == {}
        assert door.partials() == []
        data = npy_bytes(seed=2)
        deliver(door.port, framed(data))
    assert list(door.stored().values()) == [data]


def test_update_applies_to_new_connections(door: DoorLoop, tmp_path: Path) -> None:
    door.door.update(write_config(tmp_path, legacy_allow="['127.0.0.2']"))
    deliver(door.port, framed(npy_bytes()))
    assert door.stored() == {}


def test_same_millisecond_gets_a_clash_name(tmp_path: Path) -> None:
    limits = StoreLimits(100, 4)
    store = Store(tmp_path / "in", tmp_path / "part", limits)
    first, second = (store.open_partial("scan_1.npy", 3, None) for _ in range(2))
    for partial, data in ((first, b"abc"), (second, b"xyz")):
        partial.write(data)
    assert first.commit(0).outcome is Outcome.STORED
    beside = second.commit(0)
    assert (beside.outcome, beside.path) == (Outcome.KEPT_BESIDE, "scan_1~1.npy")
    assert (tmp_path / "in" / "scan_1~1.npy").read_bytes() == b"xyz"


def test_an_unverified_partial_is_never_resumed(tmp_path: Path) -> None:
    store = Store(tmp_path / "in", tmp_path / "part", StoreLimits(100, 4))
    partial = store.open_partial("scan_1.npy", 3, None)
    partial.write(b"ab")
    partial.release()
    again = store.open_partial("scan_1.npy", 3, None)
    assert again.offset == 0  # without a digest the held bytes could belong to any file
    again.discard()


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("192.168.1.20", True),
        ("192.168.2.20", False),
        ("::ffff:192.168.1.20", True),  # an IPv4 peer on a dual-stack listener
        ("fe80::1%eth0", True),
        ("fe80::2", False),
    ],
)
def test_allowed(host: str, allowed: bool) -> None:
    import ipaddress

    networks = (ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("fe80::1/128"))
    assert _allowed(host, networks) is allowed


def test_rate_limited_warning_counts_what_it_held_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    limiter = RateLimitedWarning(period=60, max_keys=2, logger=logging.getLogger(DOOR_LOG))
    with caplog.at_level(logging.WARNING, DOOR_LOG):
        for _ in range(4):
            limiter.warn("a", "from %s", "a")
        limiter.warn("b", "from %s", "b")
        limiter.warn("c", "from %s", "c")  # no room left: shares the overflow key
        limiter.warn("d", "from %s", "d")
        now[0] += 61
        limiter.warn("a", "from %s", "a")
    assert [r.message for r in caplog.records] == [
        "from a",
        "from b",
        "from c",
        "from a (3 more like this in the last minute)",
    ]
