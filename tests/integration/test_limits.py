"""A running receiver's limits under attack: sizes, slow peers, floods, free space, paths.

Same checks as test_security: the peer is turned away, nothing lands, the log names it,
and a good sender connected beforehand goes on storing files meanwhile.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import ssl
from pathlib import Path

import pytest

from scanxfer import protocol as p
from scanxfer.keys import KeyFile, keys_path
from scanxfer.store import PARTIAL_FOLDER
from scanxfer.store.partial import partial_key
from scanxfer.tls import client_context

from .attack import (
    StartReceiver,
    assert_only_good_files,
    digest,
    logged,
    tls_connect,
)
from .harness import (
    TEST_SENDER,
    ReceiverProcess,
    assert_identical,
    send_once,
    sender_config,
    write_scan,
)
from .rawclient import GoodSender, RawSender, address_of, connect, frames_in, read_frames, trickle

# --- limits ---------------------------------------------------------------------------------


def test_huge_offers_are_refused_without_allocating_anything(
    start_receiver: StartReceiver,
) -> None:
    receiver = start_receiver()
    good = GoodSender(receiver.port)
    client = RawSender(receiver.port)
    client.send(p.Offer(1, "huge.npy", 2**63 - 1, 0, bytes(16)))
    answer = client.next_event()
    assert isinstance(answer, p.Nack) and answer.reason is p.NackReason.TOO_LARGE, answer
    assert not answer.retryable
    logged(receiver, f"{client.address} ({TEST_SENDER}): refused 'huge.npy': ")
    # 2**63 fits the frame's u64 but no off_t: the protocol itself refuses it.
    client.sock.sendall(p.encode(p.Offer(2, "huger.npy", 2**63, 0, bytes(16))))
    events = read_frames(client.sock)
    assert len(events) == 1 and isinstance(events[0], p.Error), events
    assert events[0].code is p.ErrorCode.PROTOCOL_ERROR
    logged(receiver, f"{client.address} ({TEST_SENDER}): protocol error, closing: size {2**63}")
    assert receiver.child is not None
    assert peak_memory_kib(receiver) < 100 * 1024
    assert_only_good_files(receiver, good)


def peak_memory_kib(receiver: ReceiverProcess) -> int:
    assert receiver.child is not None
    status = Path(f"/proc/{receiver.child.process.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def client_hello() -> bytes:
    """The first flight of a TLS handshake, as the sender's TLS settings make it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


SLOW_PAYLOAD = bytes(64)


@pytest.mark.parametrize("stage", ["tls-handshake", "hello", "frame-header", "payload"])
def test_a_slowloris_is_cut_off_while_a_good_sender_is_served(
    start_receiver: StartReceiver, stage: str
) -> None:
    receiver = start_receiver(handshake_timeout="2s", idle_timeout="2s")
    good = GoodSender(receiver.port)
    sock, data, complaint = slow_client(receiver.port, stage)
    sent, answer = trickle(sock, data)
    assert sent < len(data), "the receiver waited for the whole trickle"
    logged(receiver, complaint)
    if stage != "tls-handshake":
        assert frames_in(answer) == [p.Error(p.ErrorCode.TIMEOUT, "timed out")]
    if stage == "payload":  # kept for a resume, as after any lost connection
        key = partial_key("slow.npy", len(SLOW_PAYLOAD), digest(SLOW_PAYLOAD))
        kept = receiver.incoming / PARTIAL_FOLDER / f"{key}.part"
        assert kept.stat().st_size <= sent
        kept.unlink()
        kept.with_suffix(".meta").unlink()
    assert_only_good_files(receiver, good)


def slow_client(port: int, stage: str) -> tuple[socket.socket, bytes, str]:
    """A connection at `stage`, the bytes to trickle into it, and the log line it earns."""
    late = "handshake failed: handshake not completed in time"
    if stage == "tls-handshake":
        sock = connect(port)
        return sock, client_hello()[:64], f"{address_of(sock)}: {late}"
    if stage == "hello":
        sock = tls_connect(port)
        hello = p.encode(p.Hello(TEST_SENDER, options={"pad": bytes(40)}))
        return sock, hello, f"{address_of(sock)}: {late}"
    client = RawSender(port)
    offer = p.Offer(1, "slow.npy", len(SLOW_PAYLOAD), 0, digest(SLOW_PAYLOAD))
    data = p.encode(offer)
    if stage == "payload":
        client.send(offer)
        assert isinstance(client.next_event(), p.Ready)
        client.send(p.DataHeader(1, 0, len(SLOW_PAYLOAD)))
        data = SLOW_PAYLOAD
    return client.sock, data, f"{client.address} ({TEST_SENDER}): no progress for too long"


def test_connections_beyond_max_connections_are_turned_away_and_the_others_finish(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver(max_connections="2")
    payloads = {"one.npy": bytes(range(256)) * 1024, "two.npy": bytes(reversed(range(256))) * 1024}
    active = []
    for index, (path, payload) in enumerate(payloads.items(), start=1):
        client = RawSender(receiver.port, source=f"127.0.0.{index + 1}")
        client.send(p.Offer(1, path, len(payload), 0, digest(payload)))
        assert isinstance(client.next_event(), p.Ready)
        client.send(p.DataHeader(1, 0, len(payload)), payload[: len(payload) // 2])
        active.append((client, payload))
    for _ in range(3):
        extra = tls_connect(receiver.port)  # told why over TLS, where a sender can read it
        events = read_frames(extra)
        assert [getattr(event, "code", event) for event in events] == [
            p.ErrorCode.TOO_MANY_CONNECTIONS
        ]
        logged(receiver, f"{address_of(extra)}: refused, already 2 connections (max_connections)")
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (8,), seed=7)
    sender = send_once(sender_config(tmp_path / "sender.yaml", receiver.port, scans))
    assert sender.process.returncode == 3, sender.log
    assert "TOO_MANY_CONNECTIONS: too many connections, retry later" in sender.log
    for client, payload in active:
        client.sock.sendall(payload[len(payload) // 2 :])
        answer = client.next_event()
        assert isinstance(answer, p.Ack) and answer.outcome is p.Outcome.STORED, answer
    for path, payload in payloads.items():
        assert (receiver.incoming / path).read_bytes() == payload
    assert receiver.stored_files() == sorted(payloads)
    assert receiver.partials() == []


def closed_by_receiver(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_idle_strangers_never_take_the_slots_of_a_paired_sender(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    # They would each hold their place for the whole handshake_timeout.
    receiver = start_receiver(handshake_timeout="300s")
    strangers = [connect(receiver.port, source="127.0.0.2") for _ in range(32)]
    try:
        # Past 4 in their handshake from one address, its oldest ones are dropped.
        logged(
            receiver,
            "dropped the oldest connection from 127.0.0.2 that had not finished its handshake: "
            "already 4 from its address were waiting for theirs (the handshake budget)",
        )
        assert all(closed_by_receiver(sock) for sock in strangers[:28])
        scans = tmp_path / "scans"
        scan = write_scan(scans / "a.npy", (8,), seed=7).read_bytes()
        sender = send_once(sender_config(tmp_path / "sender.yaml", receiver.port, scans))
        assert sender.process.returncode == 0, sender.log
        assert (receiver.incoming / "a.npy").read_bytes() == scan
        assert "TOO_MANY_CONNECTIONS" not in sender.log
    finally:
        for sock in strangers:
            sock.close()


def test_a_sender_that_proves_its_key_when_the_slots_are_full_is_told_so(
    start_receiver: StartReceiver,
) -> None:
    receiver = start_receiver(max_connections="1")
    late = RawSender(receiver.port, source="127.0.0.2", authenticate=False)  # in its handshake
    first = RawSender(receiver.port)  # proves its key first and takes the one slot
    answer = late.handshake()
    assert isinstance(answer, p.Error), answer
    assert answer.code is p.ErrorCode.TOO_MANY_CONNECTIONS
    logged(
        receiver,
        f"{late.address}: refused after its handshake: max_connections (1) senders are "
        "connected already",
    )
    assert isinstance(first.send_file("kept.npy", b"kept"), p.Ack)
    late.close()
    first.close()


def test_offers_that_would_eat_into_min_free_space_wait_for_space(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    # A receiver refuses to start below its reserve (test_storage_checks): here the reserve
    # is raised while it runs, as a disk filling up would do.
    receiver = start_receiver(min_free_space="0")
    assert receiver.config is not None and receiver.child is not None
    settings = receiver.config.read_text().replace("min_free_space: 0", "min_free_space: 100TiB")
    receiver.config.write_text(settings)
    receiver.child.process.send_signal(signal.SIGHUP)
    logged(receiver, "settings reloaded")
    # The reload says at once that files will not fit, not only at the next offer.
    logged(receiver, "less than min_free_space (100.0 TiB); free some space there")
    client = RawSender(receiver.port)
    answer = client.send_file("a.npy", b"payload")  # streams only if the receiver asks
    assert isinstance(answer, p.Nack) and answer.reason is p.NackReason.NO_SPACE, answer
    assert answer.retryable and "min_free_space" in answer.message
    logged(receiver, f"{client.address} ({TEST_SENDER}): refused 'a.npy': ")
    assert "(min_free_space)" in receiver.log
    client.close()
    scans = tmp_path / "scans"
    write_scan(scans / "b.npy", (64,), seed=6)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans)
    refused = send_once(config)
    assert refused.process.returncode == 1, refused.log
    assert "receiver has no space for b.npy" in refused.log
    assert receiver.stored_files() == [] and receiver.partials() == []
    # Space made (here: the reserve lowered) and the same receiver takes the file.
    receiver.config.write_text(settings.replace("min_free_space: 100TiB", "min_free_space: 0"))
    receiver.child.process.send_signal(signal.SIGHUP)
    logged(receiver, "settings reloaded", times=2)
    delivered = send_once(config)
    assert delivered.process.returncode == 0, delivered.log
    assert_identical(scans, receiver.incoming)


def test_per_sender_dirs_keep_two_senders_with_the_same_paths_apart(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver(per_sender_dirs="true")
    other = KeyFile(keys_path(receiver.state)).add("other-pc")
    trees = {TEST_SENDER: tmp_path / "mine", "other-pc": tmp_path / "theirs"}
    for seed, (name, scans) in enumerate(trees.items()):
        write_scan(scans / "run1" / "scan.npy", (64,), seed=seed)
        extra = {"name": name, "key": other} if name == "other-pc" else {}
        config = sender_config(
            tmp_path / f"{name}.yaml", receiver.port, scans,
            state_dir=str(tmp_path / f"{name}-state"), **extra,
        )  # fmt: skip
        sender = send_once(config)
        assert sender.process.returncode == 0, sender.log
    for name, scans in trees.items():
        assert_identical(scans, receiver.incoming / name)
    assert receiver.stored_files() == ["other-pc/run1/scan.npy", f"{TEST_SENDER}/run1/scan.npy"]


def test_paths_beyond_max_path_length_or_depth_are_refused(
    start_receiver: StartReceiver,
) -> None:
    receiver = start_receiver(max_path_length="24", max_path_depth="2")
    good = GoodSender(receiver.port)
    client = RawSender(receiver.port)
    answers = {
        path: client.send_file(path, path.encode())
        for path in ("a/b.npy", "a/b/c.npy", "x" * 20 + ".npy", "x" * 21 + ".npy")
    }
    stored = [path for path, answer in answers.items() if isinstance(answer, p.Ack)]
    assert stored == ["a/b.npy", "x" * 20 + ".npy"], answers
    refused = [answer for answer in answers.values() if isinstance(answer, p.Nack)]
    assert [answer.reason for answer in refused] == [p.NackReason.BAD_NAME] * 2
    assert "3 components, more than 2" in refused[0].message
    assert "25 UTF-8 bytes long, more than 24" in refused[1].message
    logged(receiver, f"{client.address} ({TEST_SENDER}): refused 'a/b/c.npy'")
    assert_only_good_files(receiver, good, *stored)
