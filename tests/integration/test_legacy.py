"""The prototype door and `send --legacy`, with the prototype's own kind of client: netcat.

The prototype's wire format is an 8-byte big-endian length, then the file.  Its sender is
played here by `printf` + `cat` piped into netcat (netcat-openbsd, installed by
tests/system/prerequisites.sh), its receiver by a few lines of socket code.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..procs import Proc, start_scanxfer
from .harness import (
    GIVE_UP_SECONDS,
    ReceiverProcess,
    unused_port,
    wait_until,
    write_scan,
)

SCAN_NAME = r"scan_\d{13}(~\d+)?\.npy"


def receiver_with_door(root: Path, **settings: str) -> ReceiverProcess:
    """A receiver whose prototype door is open to 127.0.0.1 (unless `settings` say otherwise)."""
    root.mkdir(parents=True, exist_ok=True)
    values = {
        "legacy_listen": f"127.0.0.1:{unused_port()}",
        "legacy_allow": "['127.0.0.1']",
        "min_free_space": "0",
        "handshake_timeout": "2s",
        "idle_timeout": "1s",
        **settings,
    }
    config = root / "receiver.yaml"
    config.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    return ReceiverProcess(root, config=config).start()


@pytest.fixture
def door(tmp_path: Path) -> Iterator[tuple[ReceiverProcess, int]]:
    """A receiver with its door open, and the door's port."""
    receiver = receiver_with_door(tmp_path / "pi")
    assert receiver.child is not None
    port = int(receiver.child.wait_for(r"prototype door at 127\.0\.0\.1:(\d+) is open", 30)[1])
    yield receiver, port
    if receiver.child.process.returncode is None:
        receiver.stop()


def printf_escapes(data: bytes) -> str:
    return "".join(f"\\x{byte:02x}" for byte in data)


def prototype_send(port: int, *files: Path, lengths: tuple[int, ...] = ()) -> int:
    """The prototype's sender from standard tools: per file, the length, then the file.

    `lengths` overrides the announced lengths, to lie the way a broken sender might.
    Returns netcat's exit status.
    """
    parts = []
    for index, path in enumerate(files):
        length = lengths[index] if index < len(lengths) else path.stat().st_size
        parts.append(f"printf '{printf_escapes(struct.pack('>Q', length))}'; cat '{path}'")
    script = f"{{ {'; '.join(parts)}; }} | nc -q 1 127.0.0.1 {port}"
    done = subprocess.run(["bash", "-c", script], capture_output=True, timeout=GIVE_UP_SECONDS)
    return done.returncode


def stored(receiver: ReceiverProcess) -> dict[str, bytes]:
    return {name: (receiver.incoming / name).read_bytes() for name in receiver.stored_files()}


def wait_for_log(receiver: ReceiverProcess, pattern: str) -> re.Match[str]:
    assert receiver.child is not None
    return receiver.child.wait_for(pattern, GIVE_UP_SECONDS)


def test_a_prototype_client_delivers_through_the_door(
    door: tuple[ReceiverProcess, int], tmp_path: Path
) -> None:
    receiver, port = door
    scan = write_scan(tmp_path / "scans" / "scan_0.npy", (256, 256), seed=1)
    assert prototype_send(port, scan) == 0
    line = wait_for_log(receiver, rf"127\.0\.0\.1:\d+: received prototype file ({SCAN_NAME}) \(")
    assert stored(receiver) == {line[1]: scan.read_bytes()}
    assert receiver.partials() == []


def test_the_door_is_closed_by_default(tmp_path: Path) -> None:
    port = unused_port()
    receiver = ReceiverProcess(tmp_path / "pi").start()
    try:
        scan = write_scan(tmp_path / "scans" / "scan_0.npy", (64, 64), seed=1)
        assert prototype_send(port, scan) != 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP_SECONDS).close()
        assert receiver.stored_files() == []
        assert "prototype door" not in receiver.log
    finally:
        receiver.stop()


def test_a_peer_outside_legacy_allow_is_refused(tmp_path: Path) -> None:
    receiver = receiver_with_door(tmp_path / "pi", legacy_allow="['127.0.0.2/32']")
    try:
        assert receiver.child is not None
        port = int(receiver.child.wait_for(r"prototype door at \S+:(\d+)", 30)[1])
        scan = write_scan(tmp_path / "scans" / "scan_0.npy", (64, 64), seed=1)
        prototype_send(port, scan)
        wait_for_log(
            receiver, r"127\.0\.0\.1:\d+: refused on the prototype door: not in legacy_allow"
        )
        assert receiver.stored_files() == []
        assert receiver.partials() == []
    finally:
        receiver.stop()


def test_several_files_on_one_connection(door: tuple[ReceiverProcess, int], tmp_path: Path) -> None:
    receiver, port = door
    scans = [write_scan(tmp_path / "scans" / f"s{n}.npy", (n * 100, 7), seed=n) for n in (1, 2, 3)]
    assert prototype_send(port, *scans) == 0
    wait_until(lambda: len(receiver.stored_files()) == 3, "three files", receiver.child)
    files = stored(receiver)
    assert sorted(files.values()) == sorted(scan.read_bytes() for scan in scans)
    assert all(re.fullmatch(SCAN_NAME, name) for name in files)


def test_bad_input_is_dropped_and_the_door_lives_on(
    door: tuple[ReceiverProcess, int], tmp_path: Path
) -> None:
    receiver, port = door
    # Bigger than any .npy header, so the door judges the header before the payload ends.
    scan = write_scan(tmp_path / "scans" / "scan_0.npy", (256, 256), seed=1)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 1000)
    prototype_send(port, garbage)
    wait_for_log(receiver, r"127\.0\.0\.1:\d+: refused a prototype file: it is not a \.npy file")
    prototype_send(port, scan, lengths=(scan.stat().st_size + 10,))
    wait_for_log(receiver, r"refused a prototype file: its \.npy header accounts for \d+ bytes")
    # 2**63 bytes announced: refused on the length alone, nothing allocated or written.
    prototype_send(port, scan, lengths=(2**63,))
    wait_for_log(receiver, rf"refused a prototype file of {2**63} bytes: more than max_file_size")
    assert receiver.stored_files() == []
    assert receiver.partials() == []
    assert prototype_send(port, scan) == 0
    wait_for_log(receiver, rf"received prototype file {SCAN_NAME}")
    assert list(stored(receiver).values()) == [scan.read_bytes()]
    assert receiver.child is not None and receiver.child.process.poll() is None


def test_a_trickle_is_cut_off(door: tuple[ReceiverProcess, int], tmp_path: Path) -> None:
    """Every byte arrives well within idle_timeout (1 s); the file still gets nowhere."""
    receiver, port = door
    data = write_scan(tmp_path / "scans" / "scan_0.npy", (64, 64), seed=1).read_bytes()
    with socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP_SECONDS) as sock:
        sock.sendall(struct.pack(">Q", len(data)) + data[:100])
        sock.settimeout(0.2)
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not _closed_by_peer(sock):
            assert time.monotonic() < deadline, "the door kept a trickling connection open"
            try:
                sock.sendall(b"\0")
            except OSError:
                break
    wait_for_log(receiver, r"too slow \(less than 64\.0 KiB within idle_timeout")
    assert receiver.stored_files() == []
    wait_until(lambda: receiver.partials() == [], "the partial dropped", receiver.child)


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


# --- scanxfer send --legacy ----------------------------------------------------------------


class PrototypeReceiver:
    """The prototype's receiver, as its README describes it: per connection, an 8-byte
    big-endian length, then that many bytes; then it closes the connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.files: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            with sock:
                sock.settimeout(GIVE_UP_SECONDS)
                self.connections += 1
                (length,) = struct.unpack(">Q", _recv_exactly(sock, 8))
                self.files.append(_recv_exactly(sock, length))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"the sender closed after {len(data)} of {count} bytes"
        data += chunk
    return bytes(data)


def legacy_sender_config(path: Path, port: int, watch: Path) -> Path:
    """A sender.yaml without key or fingerprint: the prototype knows neither."""
    path.write_text(
        f"receiver: 127.0.0.1:{port}\n"
        f"watch_dir: {watch}\n"
        f"state_dir: {path.parent / 'sender-state'}\n"
        "retry_initial: 0.05s\n"
        "retry_max: 0.2s\n"
        "settle_seconds: 0.2s\n"
    )
    return path


def send_legacy_once(config: Path) -> Proc:
    sender = start_scanxfer("sender", "send", "-c", str(config), "--once", "--legacy")
    assert sender.wait(GIVE_UP_SECONDS) == 0, sender.log
    return sender


def test_send_legacy_once_into_a_prototype_receiver(tmp_path: Path) -> None:
    scans = [
        write_scan(tmp_path / "scans" / f"r{n}" / "s.npy", (500, n), seed=n) for n in (1, 2, 3)
    ]
    prototype = PrototypeReceiver()
    try:
        config = legacy_sender_config(tmp_path / "sender.yaml", prototype.port, tmp_path / "scans")
        first = send_legacy_once(config)
        assert sorted(prototype.files) == sorted(scan.read_bytes() for scan in scans)
        assert "all 3 files sent; the prototype receiver confirms nothing more" in first.log
        # The journal remembers: a second run sends nothing at all.
        second = send_legacy_once(config)
        assert prototype.connections == 3
        assert "nothing to send: 3 files already delivered" in second.log
    finally:
        prototype.close()


def test_send_legacy_into_the_door(door: tuple[ReceiverProcess, int], tmp_path: Path) -> None:
    receiver, port = door
    scans = [write_scan(tmp_path / "scans" / f"s{n}.npy", (300, n), seed=n) for n in (1, 2)]
    send_legacy_once(legacy_sender_config(tmp_path / "sender.yaml", port, tmp_path / "scans"))
    wait_until(lambda: len(receiver.stored_files()) == 2, "two files", receiver.child)
    assert sorted(stored(receiver).values()) == sorted(scan.read_bytes() for scan in scans)


def test_send_legacy_as_a_daemon(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    prototype = PrototypeReceiver()
    config = legacy_sender_config(tmp_path / "sender.yaml", prototype.port, tmp_path / "scans")
    sender = start_scanxfer("sender", "send", "-c", str(config), "--legacy")
    try:
        sender.wait_for("watching", 30)
        scans = [write_scan(tmp_path / "scans" / f"s{n}.npy", (200, n), seed=n) for n in (1, 2)]
        wait_until(lambda: len(prototype.files) == 2, "two files at the prototype", sender)
        assert sorted(prototype.files) == sorted(scan.read_bytes() for scan in scans)
        assert sender.stop() == 0
    finally:
        sender.stop()
        prototype.close()
