"""Network faults between a sender daemon and a receiver, and the fault proxy that makes them."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanxfer.protocol.integrity import SEGMENT

from .faultproxy import FaultProxy, Plan
from .harness import (
    ReceiverProcess,
    assert_identical,
    count_matches,
    seeded_random,
    sender_config,
    start_sender,
    unused_port,
    wait_for_files,
    write_big_scan,
    write_scan,
)

# --- the proxy itself, with plain sockets ---------------------------------------------------


class Recorder:
    """A plain TCP server: greets each connection with `reply`, records what it sends."""

    def __init__(self, reply: bytes = b"") -> None:
        self.reply = reply
        self.received: list[bytearray] = []
        self.ended = 0  # connections whose peer has closed
        self.changed = threading.Condition()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._record, args=(conn,), daemon=True).start()

    def _record(self, conn: socket.socket) -> None:
        with self.changed:
            data = bytearray()
            self.received.append(data)
        with conn, contextlib.suppress(OSError):
            conn.sendall(self.reply)
            while chunk := conn.recv(1 << 16):
                with self.changed:
                    data += chunk
                    self.changed.notify_all()
        with self.changed:
            self.ended += 1
            self.changed.notify_all()

    def wait_for(self, connection: int, size: int) -> bytes:
        """What connection `connection` (from 0) sent, once at least `size` bytes are in."""
        with self.changed:
            assert self.changed.wait_for(
                lambda: len(self.received) > connection and len(self.received[connection]) >= size,
                30,
            ), self.received
            return bytes(self.received[connection])


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder(reply=b"hello from the receiver")
    yield server
    server.listener.close()


def exchange(port: int, payload: bytes) -> bytes:
    """Send `payload`, close our side, and read the answer until the other side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        answer = bytearray()
        with contextlib.suppress(OSError):  # a cut may reset us
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(1 << 16):
                answer += chunk
        return bytes(answer)


def test_proxy_passes_clean_connections_through_and_counts_bytes(recorder: Recorder) -> None:
    payload = bytes(range(256)) * 1000
    with FaultProxy(recorder.port) as proxy:
        assert exchange(proxy.port, payload) == recorder.reply
        assert recorder.wait_for(0, len(payload)) == payload
        link = proxy.link(1)
        assert link.closed.wait(30)
        assert (proxy.connections, proxy.upstream_bytes) == (1, len(payload))
        assert proxy.downstream_bytes == len(recorder.reply)


def test_proxy_cuts_the_first_connection_and_passes_the_second(recorder: Recorder) -> None:
    payload = b"x" * 200_000
    with FaultProxy(recorder.port, [Plan(cut_after=70_001)]) as proxy:
        exchange(proxy.port, payload)
        assert proxy.link(1).cut.wait(30)
        assert recorder.wait_for(0, 70_001) == payload[:70_001]
        assert exchange(proxy.port, payload) == recorder.reply
        assert recorder.wait_for(1, len(payload)) == payload
        assert proxy.link(1).upstream == 70_001
        assert not proxy.link(2).cut.is_set()


def test_proxy_flips_exactly_one_byte(recorder: Recorder) -> None:
    payload = bytes(200_000)
    with FaultProxy(recorder.port, [Plan(flip_at=65_537)]) as proxy:
        exchange(proxy.port, payload)
        received = recorder.wait_for(0, len(payload))
        assert proxy.link(1).flipped.is_set()
    assert [i for i, byte in enumerate(received) if byte] == [65_537]
    assert received[65_537] == 0xFF


def test_proxy_stalls_until_released(recorder: Recorder) -> None:
    payload = b"y" * 100_000
    with FaultProxy(recorder.port, [Plan(stall_after=1000)]) as proxy:
        client = threading.Thread(target=exchange, args=(proxy.port, payload))
        client.start()
        link = proxy.link(1)
        assert link.stalled.wait(30)
        assert recorder.wait_for(0, 1000) == payload[:1000]
        assert link.upstream == 1000 and not link.closed.is_set()
        link.release()
        assert recorder.wait_for(0, len(payload)) == payload
        client.join(30)
        assert link.downstream == len(recorder.reply)


def test_closing_a_stalled_proxy_forwards_nothing_more(recorder: Recorder) -> None:
    proxy = FaultProxy(recorder.port, [Plan(stall_after=1000)])
    client = threading.Thread(target=exchange, args=(proxy.port, b"w" * 100_000))
    client.start()
    assert proxy.link(1).stalled.wait(30)
    proxy.close()
    client.join(30)
    with recorder.changed:
        assert recorder.changed.wait_for(lambda: recorder.ended == 1, 30)
    assert len(recorder.received[0]) == 1000 == proxy.upstream_bytes


def test_proxy_ends_a_timed_stall_by_itself(recorder: Recorder) -> None:
    payload = b"z" * 10_000
    with FaultProxy(recorder.port, [Plan(stall_after=0, stall_seconds=0.2)]) as proxy:
        assert exchange(proxy.port, payload) == recorder.reply
        assert recorder.wait_for(0, len(payload)) == payload
        assert proxy.link(1).stalled.is_set()


def test_proxy_throttles_without_losing_bytes(recorder: Recorder) -> None:
    payload = bytes(range(256)) * 2000
    with FaultProxy(recorder.port, [Plan(rate=5e6)]) as proxy:
        assert exchange(proxy.port, payload) == recorder.reply
        assert recorder.wait_for(0, len(payload)) == payload
        assert proxy.upstream_bytes == len(payload)


def test_proxy_drops_downstream_bytes_after_a_limit(recorder: Recorder) -> None:
    with FaultProxy(recorder.port, [Plan(drop_downstream_after=5)]) as proxy:
        assert exchange(proxy.port, b"ping") == recorder.reply[:5]
        link = proxy.link(1)
        assert link.closed.wait(30)
        assert link.dropped == len(recorder.reply) - 5 and link.dropping.is_set()


def test_proxy_to_a_dead_port_closes_the_client_at_once() -> None:
    with FaultProxy(unused_port()) as proxy:
        assert exchange(proxy.port, b"anyone?") == b""
        assert proxy.connections == 1 and proxy.link(1).closed.is_set()


# --- the sender daemon through the proxy ----------------------------------------------------

DAEMON = {"retry_initial": "0.05s", "retry_max": "0.5s", "stall_timeout": "2s"}


def small_and_big(scans: Path, small: int, big_mib: int) -> list[str]:
    for index in range(small):
        write_scan(scans / f"s{index:02}.npy", (256, 256), index)  # 128 KiB each
    write_big_scan(scans / "big" / "volume.npy", big_mib)
    return sorted(path.relative_to(scans).as_posix() for path in scans.rglob("*.npy"))


def deliver_through(
    tmp_path: Path,
    proxy: FaultProxy,
    receiver: ReceiverProcess,
    expected: list[str],
    tls: str = "true",
) -> str:
    """Run a sender daemon through `proxy` until everything is stored; its log."""
    scans = tmp_path / "scans"
    config = sender_config(tmp_path / "sender.yaml", proxy.port, scans, **DAEMON, tls=tls)
    sender = start_sender(config)
    try:
        wait_for_files(receiver, expected, sender)
    finally:
        assert sender.stop() == 0, sender.log
    assert receiver.stored_files() == expected  # exactly once: no name~1.npy copies
    assert_identical(scans, receiver.incoming)
    return sender.log


def test_cuts_at_random_offsets_of_several_connections_recover(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    rng = seeded_random()
    expected = small_and_big(tmp_path / "scans", small=20, big_mib=20)
    # Six cuts that together carry less than the 22 MiB to send, so every one of them happens.
    plans = [Plan(cut_after=rng.randrange(1, 3 << 20)) for _ in range(6)]
    print("cut offsets:", [plan.cut_after for plan in plans])
    with FaultProxy(receiver.port, plans) as proxy:
        deliver_through(tmp_path, proxy, receiver, expected)
        cuts = sum(link.cut.is_set() for link in proxy.links)
    assert cuts == len(plans)
    # The cut file resumed from what the receiver held, instead of starting over.
    assert count_matches(r"resuming ", receiver.log) >= 1


def test_a_stalled_connection_is_abandoned_and_reopened(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    expected = small_and_big(tmp_path / "scans", small=10, big_mib=20)
    # Connection 1 goes silent both ways mid-file for 30 s; the sender gives up on it after
    # its 2 s stall_timeout, long before the proxy would let it go.
    stall = Plan(stall_after=8 << 20, stall_seconds=30)
    with FaultProxy(receiver.port, [stall]) as proxy:
        log = deliver_through(tmp_path, proxy, receiver, expected)
        assert proxy.link(1).stalled.is_set()
        assert proxy.connections >= 2
    assert count_matches(r"connected to", log) >= 2
    # The receiver cannot tell a stall from a slow link; the sender's reconnection tells it,
    # and frees the stalled connection's partial for resume (no wait for idle_timeout).
    assert "reconnected; closing its previous connection" in receiver.log
    assert count_matches(r"resuming ", receiver.log) >= 1


def test_a_flipped_byte_is_caught_by_the_payload_tag_and_the_file_resent(tmp_path: Path) -> None:
    # Plain TCP: the tag after the payload catches it (docs/protocol.md 2.1), before the
    # digest could; under TLS the record's MAC does (the last test of these three).
    settings = tmp_path / "receiver.yaml"
    settings.write_text("tls: false\n")
    receiver = ReceiverProcess(tmp_path / "pi", config=settings).start()
    scans = tmp_path / "scans"
    for index in range(3):
        write_scan(scans / f"s{index}.npy", (1024, 512), index)  # 1 MiB each
    expected = ["s0.npy", "s1.npy", "s2.npy"]
    # Offers and handshake are a few hundred bytes: offset 512 KiB is inside the first payload.
    with FaultProxy(receiver.port, [Plan(flip_at=512 << 10)]) as proxy:
        deliver_through(tmp_path, proxy, receiver, expected, tls="false")
        assert proxy.link(1).flipped.is_set()
    assert count_matches(r"frame authentication failed", receiver.log) == 1
    assert receiver.partials() == []
    receiver.stop()


def test_a_flipped_byte_in_a_file_with_a_deferred_digest_is_caught_too(tmp_path: Path) -> None:
    # 16 MiB: big enough that the sender hashes it while sending and sends the digest after.
    settings = tmp_path / "receiver.yaml"
    settings.write_text("tls: false\n")
    receiver = ReceiverProcess(tmp_path / "pi", config=settings).start()
    write_big_scan(tmp_path / "scans" / "big.npy", 16)
    with FaultProxy(receiver.port, [Plan(flip_at=5 << 20)]) as proxy:
        deliver_through(tmp_path, proxy, receiver, ["big.npy"], tls="false")
        assert proxy.link(1).flipped.is_set()
    assert count_matches(r"frame authentication failed", receiver.log) == 1
    # The segments before the damaged one were checked and kept: the resend resumed at the
    # start of the damaged segment, before the flipped byte, and the file is intact.
    (resumed,) = re.findall(r"resumed at (\d+)", receiver.log)
    assert int(resumed) % SEGMENT == 0 and int(resumed) < 5 << 20
    assert receiver.partials() == []
    receiver.stop()


def test_a_flipped_byte_under_tls_ends_the_connection_and_the_file_is_resent(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    for index in range(3):
        write_scan(scans / f"s{index}.npy", (1024, 512), index)
    expected = ["s0.npy", "s1.npy", "s2.npy"]
    with FaultProxy(receiver.port, [Plan(flip_at=512 << 10)]) as proxy:
        deliver_through(tmp_path, proxy, receiver, expected)
        assert proxy.link(1).flipped.is_set()
    # The receiver's TLS layer refused the damaged record; nothing damaged was stored.
    assert count_matches(r"connection lost: .*(DECRYPTION|BAD_RECORD_MAC|decrypt)", receiver.log)
