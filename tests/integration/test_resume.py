"""Resume, never resend: what a rerun moves after a sender was interrupted, with real processes.

Each rerun goes through a `FaultProxy` that passes everything and counts the bytes the sender
puts on the wire, so "not sent again" is measured, not inferred from a log line.  Below
1 MiB is the handshake, the frames and TLS: no payload of a big file fits in it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import xxhash

from scanxfer import protocol as p
from scanxfer.store import PARTIAL_FOLDER

from .faultproxy import FaultProxy, Plan
from .harness import (
    ReceiverProcess,
    assert_identical,
    send_once,
    send_once_in_background,
    sender_config,
    wait_until,
    write_big_scan,
)
from .rawclient import RawSender

MIB = 1 << 20
ASK = {p.ASK_DIGEST_OPTION: p.ASK_DIGEST_ON}


def rerun_through_a_counter(
    tmp_path: Path, receiver: ReceiverProcess, scans: Path
) -> tuple[int, str]:
    """`send --once` with the journal of the runs before, through a clean relay; the bytes it
    sent upstream and its log."""
    with FaultProxy(receiver.port) as counter:
        config = sender_config(tmp_path / "rerun.yaml", counter.port, scans)
        rerun = send_once(config, timeout=300)
        assert rerun.process.returncode == 0, rerun.log
        return counter.upstream_bytes, rerun.log


def test_a_big_file_stored_before_the_sender_was_killed_is_not_sent_again(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    big = write_big_scan(scans / "volume.npy", 64)
    # A slow link, so that the test can hold the receiver's answers back before the ACK.
    with FaultProxy(receiver.port, [Plan(rate=20 * MIB)]) as proxy:
        config = sender_config(tmp_path / "rerun.yaml", proxy.port, scans)
        sender = send_once_in_background(config)
        link = proxy.link(1)
        # Payload flowing means READY has reached the sender: from now on it hears nothing.
        wait_until(lambda: link.upstream > MIB, "the payload to flow", sender)
        link.hold_downstream()
        receiver.child.wait_for(r"received volume\.npy \(", 120)
        sender.stop(signal.SIGKILL)  # the ACK never reached it, nor its journal
    assert receiver.stored_files() == ["volume.npy"]

    sent, log = rerun_through_a_counter(tmp_path, receiver, scans)
    assert sent < MIB, sent
    assert "volume.npy: the receiver may hold it already; told it the digest first" in log
    receiver.child.wait_for(
        r"volume\.npy is already stored as volume\.npy \(duplicate, told by its digest", 10
    )
    assert receiver.stored_files() == ["volume.npy"]  # no volume~1.npy
    assert receiver.partials() == []
    assert_identical(scans, receiver.incoming)
    assert big.stat().st_size > 64 * MIB


def test_a_file_whose_bytes_all_arrived_before_the_cut_is_stored_without_them(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    """The sender got as far as the last payload byte, and no DIGEST: the partial is whole."""
    scans = tmp_path / "scans"
    big = write_big_scan(scans / "volume.npy", 16)
    payload, mtime_ns = big.read_bytes(), big.stat().st_mtime_ns
    cut = RawSender(receiver.port, options=ASK)
    file_id = next(cut.ids)
    cut.send(p.Offer(file_id, "volume.npy", len(payload), mtime_ns, p.DEFERRED_DIGEST))
    ready = cut.next_event()
    assert ready == p.Ready(file_id, 0), ready
    cut.stream(ready, payload)
    cut.close()
    wait_until(lambda: whole_partial(receiver, len(payload)), "the whole partial", receiver.child)

    sent, _ = rerun_through_a_counter(tmp_path, receiver, scans)
    assert sent < MIB, sent
    receiver.child.wait_for(r"volume\.npy is held whole already", 10)
    receiver.child.wait_for(r"received volume\.npy \(.*resumed at", 10)
    assert receiver.stored_files() == ["volume.npy"]
    assert receiver.partials() == []
    assert_identical(scans, receiver.incoming)


def whole_partial(receiver: ReceiverProcess, size: int) -> bool:
    """The receiver let go of a partial that holds `size` bytes (its sidecar is written)."""
    sizes = [path.stat().st_size for path in receiver.partials()]
    return sizes == [size] and any((receiver.incoming / PARTIAL_FOLDER).glob("*.meta"))


def test_a_sender_killed_mid_file_resumes_from_the_receivers_offset(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    big = write_big_scan(scans / "volume.npy", 64)
    size = big.stat().st_size
    # The relay freezes the stream at 24 MiB, so that the kill lands mid-file every time.
    with FaultProxy(receiver.port, [Plan(stall_after=24 * MIB)]) as proxy:
        config = sender_config(tmp_path / "rerun.yaml", proxy.port, scans)
        sender = send_once_in_background(config)
        assert proxy.link(1).stalled.wait(120), sender.log
        held = stable_partial_size(receiver)
        sender.stop(signal.SIGKILL)
    assert held > 0 and receiver.stored_files() == []

    sent, log = rerun_through_a_counter(tmp_path, receiver, scans)
    offset = int(receiver.child.wait_for(r"resuming volume\.npy at (\d+)", 10).group(1))
    assert offset == held
    assert f"resuming volume.npy at byte {offset}" in log
    assert sent < size - offset + MIB, (sent, size, offset)
    assert receiver.stored_files() == ["volume.npy"]
    assert_identical(scans, receiver.incoming)


def stable_partial_size(receiver: ReceiverProcess) -> int:
    """The partial's size once it has stopped growing (the relay holds the rest back)."""
    last = -1
    for _ in range(600):
        sizes = [path.stat().st_size for path in receiver.partials()]
        if sizes and sizes[0] == last > 0:
            return last
        last = sizes[0] if sizes else -1
        time.sleep(0.2)
    raise AssertionError(f"the partial never stopped growing:\n{receiver.log}")


def test_a_sender_without_the_option_sends_a_stored_file_again_as_before(
    receiver: ReceiverProcess,
) -> None:
    """An old sender: READY, every byte, DIGEST, and only then ACK DUPLICATE; no clash copy."""
    payload = os.urandom(9 * MIB)
    first = RawSender(receiver.port, options=ASK)
    assert first.send_file("volume.npy", payload) == p.Ack(1, p.Outcome.STORED, "volume.npy")
    first.close()

    old = RawSender(receiver.port)
    assert not old.conn.can_ask_digest
    file_id = old.offer("volume.npy", payload, deferred=True)
    ready = old.next_event()
    assert ready == p.Ready(file_id, 0), ready
    old.stream(ready, payload)
    old.send(p.Digest(file_id, xxhash_of(payload)))
    assert old.next_event() == p.Ack(file_id, p.Outcome.DUPLICATE, "volume.npy")
    old.close()

    new = RawSender(receiver.port, options=ASK)
    assert new.conn.can_ask_digest
    file_id = new.offer("volume.npy", payload, deferred=True)
    assert new.next_event() == p.AskDigest(file_id)
    new.send(p.Digest(file_id, xxhash_of(payload)))
    assert new.next_event() == p.Ack(file_id, p.Outcome.DUPLICATE, "volume.npy")
    new.close()
    assert receiver.stored_files() == ["volume.npy"]


def xxhash_of(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)
