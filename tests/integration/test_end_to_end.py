"""scanxfer receive / send --once as real processes over loopback."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import xxhash

from scanxfer import protocol as p

from .faultproxy import CLEAN, FaultProxy, Plan
from .harness import (
    ReceiverProcess,
    assert_identical,
    count_matches,
    send_once,
    send_once_in_background,
    sender_config,
    write_big_scan,
    write_scan,
)
from .rawclient import RawSender, connect


def test_300_nested_files_and_a_256_mib_file_arrive_identical(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    for index in range(300):
        write_scan(
            scans / f"run{index % 5}" / f"day{index % 3}" / f"s{index:03}.npy", (16, 16), index
        )
    write_big_scan(scans / "big" / "volume.npy", 256)
    sender = send_once(sender_config(tmp_path / "sender.yaml", receiver.port, scans))
    assert sender.process.returncode == 0, sender.log
    assert_identical(scans, receiver.incoming)
    assert count_matches(r"received ", receiver.log) == 301
    assert "all 301 files delivered" in sender.log
    assert receiver.partials() == []
    # Streaming, not buffering: a 256 MiB file must not show up in either process's memory.
    assert sender.peak_rss_kib < 100 * 1024, sender.peak_rss_kib
    receiver.stop()
    assert receiver.child is not None and receiver.child.peak_rss_kib < 100 * 1024


def test_killed_receiver_resumes_the_big_file_from_an_offset(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    big = write_big_scan(scans / "volume.npy", 256)
    receiver = ReceiverProcess(tmp_path / "pi").start()
    # The proxy freezes the transfer at 100 MiB, so the kill lands mid-file every time.
    proxy = FaultProxy(receiver.port, [Plan(stall_after=100 << 20, stall_downstream=False)])
    sender = send_once_in_background(sender_config(tmp_path / "via-proxy.yaml", proxy.port, scans))
    assert proxy.link(1).stalled.wait(120), sender.log
    held = wait_for_partial_bytes(receiver, at_least=90 << 20)
    receiver.stop(signal.SIGKILL)
    proxy.close()
    assert not (receiver.incoming / "volume.npy").exists()  # no half file under its name
    # With no receiver the --once sender gives up, saying why.
    assert sender.wait(120) == 3, sender.log
    assert "gave up" in sender.log

    receiver.start()  # same directories, same port
    try:
        resumed = send_once(sender_config(tmp_path / "direct.yaml", receiver.port, scans))
        assert resumed.process.returncode == 0, resumed.log
        offset = int(receiver.child.wait_for(r"resuming volume.npy at (\d+)", 10).group(1))
        assert offset == held > 0
        assert f"resuming volume.npy at byte {offset}" in resumed.log
        assert_identical(scans, receiver.incoming)
        assert receiver.stored_files() == ["volume.npy"]
        assert (receiver.incoming / "volume.npy").stat().st_size == big.stat().st_size
    finally:
        receiver.stop()


def wait_for_partial_bytes(receiver: ReceiverProcess, at_least: int) -> int:
    """The partial's size once it holds `at_least` bytes and has stopped growing."""
    deadline = time.monotonic() + 120
    last = -1
    while time.monotonic() < deadline:
        sizes = [path.stat().st_size for path in receiver.partials()]
        if sizes and max(sizes) >= at_least and max(sizes) == last:
            return last
        last = max(sizes, default=-1)
        time.sleep(0.2)
    raise AssertionError(f"the partial never reached {at_least} bytes:\n{receiver.log}")


def test_a_resent_file_is_a_duplicate_and_a_changed_one_is_kept_beside(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    first = write_scan(scans / "a" / "scan.npy", (32, 32), seed=1)
    write_scan(scans / "b.npy", (8,), seed=2)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans)
    assert send_once(config).process.returncode == 0
    original = first.read_bytes()

    # The sender's journal knows both are delivered: nothing is offered again.
    again = send_once(config)
    assert again.process.returncode == 0, again.log
    assert "nothing to send: 2 files already delivered" in again.log
    # A sender without that journal (lost state, another machine) offers them again:
    # the receiver recognises identical content and stores no second copy.
    fresh_state = sender_config(
        tmp_path / "fresh.yaml", receiver.port, scans, state_dir=str(tmp_path / "fresh-state")
    )
    resent = send_once(fresh_state)
    assert resent.process.returncode == 0, resent.log
    assert count_matches(r"already on the receiver", resent.log) == 2
    assert receiver.stored_files() == ["a/scan.npy", "b.npy"]

    write_scan(first, (32, 32), seed=99)  # same name, new content
    changed = send_once(config)
    assert changed.process.returncode == 0, changed.log
    assert receiver.stored_files() == ["a/scan.npy", "a/scan~1.npy", "b.npy"]
    assert (receiver.incoming / "a" / "scan.npy").read_bytes() == original
    assert (receiver.incoming / "a" / "scan~1.npy").read_bytes() == first.read_bytes()
    assert "kept the new file beside it as a/scan~1.npy" in receiver.log
    assert "a/scan.npy changed after delivery; sending the new version" in changed.log


def test_a_big_scan_over_plain_tcp_arrives_identical(tmp_path: Path) -> None:
    """Without TLS the kernel sends the file (sendfile) while a thread hashes it: the two
    must not share a file position, or the digest is of shuffled bytes and never matches."""
    settings = tmp_path / "receiver.yaml"
    settings.write_text("tls: false\n")
    receiver = ReceiverProcess(tmp_path / "pi", config=settings).start()
    try:
        scans = tmp_path / "scans"
        write_big_scan(scans / "volume.npy", 160)  # 20 sendfile slices, deferred digest
        config = sender_config(tmp_path / "sender.yaml", receiver.port, scans, tls="false")
        sender = send_once(config)
        assert sender.process.returncode == 0, sender.log
        assert "digest mismatch" not in sender.log
        assert_identical(scans, receiver.incoming)
    finally:
        receiver.stop()


def test_a_big_file_whose_metadata_alone_changed_is_not_sent_again(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    """A chmod moves the ctime, so the version is new; the bytes are hashed, not sent."""
    scans = tmp_path / "scans"
    big = write_big_scan(scans / "volume.npy", 16)  # above the deferred-digest threshold
    with FaultProxy(receiver.port, lambda _: CLEAN) as proxy:
        config = sender_config(tmp_path / "sender.yaml", proxy.port, scans)
        assert send_once(config).process.returncode == 0
        sent_first = proxy.upstream_bytes
        assert sent_first > big.stat().st_size
        big.chmod(0o444)
        again = send_once(config)
        assert again.process.returncode == 0, again.log
        resent = proxy.upstream_bytes - sent_first
    assert "volume.npy changed after delivery; sending the new version" in again.log
    assert "volume.npy is already on the receiver as volume.npy" in again.log
    assert resent < 1 << 20  # handshake and OFFER, not the 16 MiB
    assert receiver.stored_files() == ["volume.npy"]


@pytest.mark.parametrize(
    "name",
    [
        "../x.npy",
        "/etc/x.npy",
        "a/../../x.npy",
        "a\0b.npy",
        "a\\b.npy",
        "a//b.npy",
        "..",
        "line\nbreak.npy",
        "\udcff.npy",
        "x" * 300,
        "/".join(["d"] * 40),
    ],
)
def test_bad_names_are_refused_and_nothing_is_written(
    name: str, receiver: ReceiverProcess, outside: Path
) -> None:
    client = RawSender(receiver.port)
    answer = client.send_file(name, b"payload")
    assert isinstance(answer, p.Nack) and answer.reason is p.NackReason.BAD_NAME, answer
    assert not answer.retryable
    assert client.send_file("fine.npy", b"ok").outcome is p.Outcome.STORED
    assert receiver.stored_files() == ["fine.npy"]
    assert list(outside.iterdir()) == []
    assert list(receiver.root.parent.glob("x.npy")) == []


def test_files_arriving_together_are_committed_together_and_a_bad_one_alone_refused(
    receiver: ReceiverProcess,
) -> None:
    """Three files sent in one write, so (usually) read in one pass and committed together;
    the middle one's bytes do not match its digest."""
    client = RawSender(receiver.port)
    scans = {f"group/scan_{i}.npy": os.urandom(20_000 + i) for i in range(3)}
    for file_id, (path, payload) in enumerate(scans.items(), start=1):
        client.send(p.Offer(file_id, path, len(payload), 0, xxhash.xxh3_128_digest(payload)))
    assert [type(client.next_event()) for _ in scans] == [p.Ready] * 3
    stream = bytearray()
    for file_id, payload in enumerate(scans.values(), start=1):
        damaged = payload[:-1] + bytes([payload[-1] ^ 1]) if file_id == 2 else payload
        stream += client.conn.send(p.DataHeader(file_id, 0, len(payload))) + damaged
    client.sock.sendall(stream)
    answers = {answer.file_id: answer for answer in (client.next_event() for _ in scans)}
    assert [type(answers[i]) for i in (1, 2, 3)] == [p.Ack, p.Nack, p.Ack]
    assert answers[2].reason is p.NackReason.DIGEST_MISMATCH and answers[2].retryable
    assert receiver.stored_files() == ["group/scan_0.npy", "group/scan_2.npy"]
    for path in ("group/scan_0.npy", "group/scan_2.npy"):
        assert (receiver.incoming / path).read_bytes() == scans[path]
    assert receiver.partials() == []
    client.close()


def test_a_symlink_planted_in_incoming_is_never_followed(
    receiver: ReceiverProcess, outside: Path
) -> None:
    (receiver.incoming / "evil").symlink_to(outside)
    (receiver.incoming / "trap.npy").symlink_to(outside / "trap.npy")
    client = RawSender(receiver.port)
    answer = client.send_file("evil/x.npy", b"payload")
    assert isinstance(answer, p.Nack) and answer.reason is p.NackReason.BAD_NAME
    beside = client.send_file("trap.npy", b"payload")
    assert isinstance(beside, p.Ack) and beside.outcome is p.Outcome.KEPT_BESIDE
    assert list(outside.iterdir()) == []
    assert (receiver.incoming / beside.stored_path).read_bytes() == b"payload"


@pytest.mark.parametrize(
    ("tls", "refusal"),
    [("true", "no TLS handshake"), ("false", "not a scanxfer handshake")],
)
def test_garbage_clients_do_not_disturb_a_good_transfer(
    tmp_path: Path, tls: str, refusal: str
) -> None:
    settings = tmp_path / "receiver.yaml"
    settings.write_text(f"tls: {tls}\nhandshake_timeout: 2s\n")
    receiver = ReceiverProcess(tmp_path / "pi", config=settings).start()
    try:
        scans = tmp_path / "scans"
        write_big_scan(scans / "volume.npy", 64)
        for index in range(20):
            write_scan(scans / f"s{index}.npy", (64, 64), index)
        config = sender_config(tmp_path / "sender.yaml", receiver.port, scans, tls=tls)
        sender = send_once_in_background(config)
        attackers = [
            threading.Thread(target=hostile_client, args=(receiver.port, kind))
            for kind in ("random", "prototype", "oversized", "half-hello") * 3
        ]
        for thread in attackers:
            thread.start()
        for thread in attackers:
            thread.join(60)
        assert sender.wait(300) == 0, sender.log
        assert_identical(scans, receiver.incoming)
        assert receiver.child is not None and receiver.child.process.poll() is None
    finally:
        receiver.stop()  # a test leaves no daemon behind
    # Each is refused before it is parsed as a file; past max_auth_failures, silently.
    assert count_matches(f"handshake failed: {refusal}", receiver.log) >= 9
    assert "handshake failed" not in sender.log
    assert receiver.stored_files() == sorted(
        path.relative_to(scans).as_posix() for path in scans.rglob("*.npy")
    )


def hostile_client(port: int, kind: str) -> None:
    payloads = {
        "random": os.urandom(4096),
        "prototype": (1000).to_bytes(8, "big") + b"\x93NUMPY" + b"\0" * 994,
        "oversized": bytes([p.FrameType.HELLO]) + (2**32 - 1).to_bytes(4, "big") + b"x" * 100,
        "half-hello": p.encode(p.Hello("x"))[:9],
    }
    # From another loopback address than the good sender: the brake on failed handshakes,
    # which these clients trip, works per address.
    with connect(port, "127.0.0.2") as sock:
        try:
            sock.sendall(payloads[kind])
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass  # the receiver may reset us: that is the point


def test_several_senders_at_once_into_one_receiver(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    senders = []
    for name in ("alpha", "beta", "gamma"):
        scans = tmp_path / name
        write_big_scan(scans / name / "volume.npy", 16)
        for index in range(40):
            write_scan(scans / name / f"s{index:02}.npy", (32, 32), index)
        config = sender_config(tmp_path / f"{name}.yaml", receiver.port, scans)
        senders.append((scans, send_once_in_background(config)))
    for scans, sender in senders:
        assert sender.wait(300) == 0, sender.log
        assert_identical(scans, receiver.incoming)
    assert len(receiver.stored_files()) == 3 * 41
    assert count_matches(r"connected", receiver.log) == 3


def test_sighup_reloads_the_settings_for_new_connections(tmp_path: Path) -> None:
    config = tmp_path / "receiver.yaml"
    config.write_text("max_file_size: 1GiB\n")
    receiver = ReceiverProcess(tmp_path / "pi", config=config).start()
    try:
        assert isinstance(RawSender(receiver.port).send_file("a.npy", b"x" * 100), p.Ack)
        config.write_text("max_file_size: 10\n")
        receiver.child.process.send_signal(signal.SIGHUP)
        receiver.child.wait_for("settings reloaded", 30)
        answer = RawSender(receiver.port).send_file("b.npy", b"x" * 100)
        assert isinstance(answer, p.Nack) and answer.reason is p.NackReason.TOO_LARGE
        config.write_text("max_file_size: [not a size\n")
        receiver.child.process.send_signal(signal.SIGHUP)
        receiver.child.wait_for("reload failed, keeping the previous settings", 30)
        assert receiver.child.process.poll() is None
    finally:
        receiver.stop()
