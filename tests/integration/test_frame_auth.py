"""Plain TCP (`tls: false`) keeps integrity: a man in the middle changes or adds a frame.

Issue 16: without frame authentication, a flipped bit in an OFFER stored a file under another
name, a flipped bit in a NACK failed a file for good, and a frame injected after a relayed
handshake was stored as the paired sender's.  Here a real sender and a real receiver talk
through `tamper.TamperingRelay`, whose first connection is attacked and later ones pass
clean: each attack must end its connection with "frame authentication failed", nothing may
be stored wrongly, and the sender must record only what the clean connection told it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import xxhash

from scanxfer import protocol as p

from .attack import logged
from .harness import (
    ReceiverProcess,
    assert_identical,
    send_once,
    sender_config,
    sender_status,
    write_scan,
)
from .rawclient import RawSender
from .tamper import DOWNSTREAM, UPSTREAM, Attack, Flip, Inject, TamperingRelay

DETECTED = "frame authentication failed"
SCAN = "s0.npy"  # 6 path bytes
# The offset in a frame's body of its path's last byte: OFFER 36 + 2 + 5, ACK 5 + 2 + 5.
OFFER_PATH_END = 43
ACK_PATH_END = 12
NACK_RETRYABLE = 6


def plain_receiver(tmp_path: Path, *settings: str) -> ReceiverProcess:
    config = tmp_path / "receiver.yaml"
    config.write_text("".join(f"{line}\n" for line in ("tls: false", *settings)))
    return ReceiverProcess(tmp_path / "pi", config=config).start()


def send_through(tmp_path: Path, receiver: ReceiverProcess, attack: Attack) -> tuple[str, Path]:
    """`send --once` of the scans through a relay that attacks its first connection."""
    relay = TamperingRelay(receiver.port, attack)
    config = sender_config(tmp_path / "sender.yaml", relay.port, tmp_path / "scans", tls="false")
    try:
        sender = send_once(config, timeout=120)
    finally:
        relay.close()
    assert relay.tampered, f"the relay never met its frame:\n{sender.log}"
    assert relay.connections >= 2, "the sender did not reconnect after the attack"
    return sender.log, config


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    write_scan(tmp_path / "scans" / SCAN, (64, 64), 1)
    return tmp_path / "scans"


def test_a_flipped_bit_in_an_offer_stores_nothing_under_another_name(
    tmp_path: Path, scans: Path
) -> None:
    receiver = plain_receiver(tmp_path)
    # "s0.npy" would become "s0.npx" without the tag.
    log, config = send_through(
        tmp_path, receiver, Flip(UPSTREAM, p.FrameType.OFFER, OFFER_PATH_END)
    )
    logged(receiver, DETECTED)
    assert receiver.stored_files() == [SCAN]
    assert_identical(scans, receiver.incoming)
    assert receiver.partials() == []
    status = sender_status(config)
    assert status["delivered"] == 1 and status["failed"] == []
    assert status["last_delivered"]["stored_path"] == SCAN, log
    assert "plain TCP (tls: false), every frame authenticated, nothing encrypted" in log
    receiver.stop()


def test_a_flipped_retryable_bit_in_a_nack_is_not_believed(tmp_path: Path, scans: Path) -> None:
    receiver = plain_receiver(tmp_path, "max_file_size: 1KiB")  # the scan gets NACK TOO_LARGE
    # retryable 0 -> 1: believed, it would be a refusal to count and retry.
    log, config = send_through(
        tmp_path, receiver, Flip(DOWNSTREAM, p.FrameType.NACK, NACK_RETRYABLE)
    )
    assert DETECTED in log
    assert receiver.stored_files() == [] and receiver.partials() == []
    (failed,) = sender_status(config)["failed"]
    # Only the NACK of the clean connection counts: one refusal, for good, for its reason.
    assert failed["path"] == SCAN and failed["attempts"] == 1, log
    assert failed["reason"].startswith("too_large"), failed
    receiver.stop()


def test_a_flipped_bit_in_an_ack_records_no_wrong_stored_path(tmp_path: Path, scans: Path) -> None:
    receiver = plain_receiver(tmp_path)
    # "s0.npy" would be recorded as stored at "s0.npx".
    log, config = send_through(tmp_path, receiver, Flip(DOWNSTREAM, p.FrameType.ACK, ACK_PATH_END))
    assert DETECTED in log
    # The receiver stored it before its ACK was damaged; the re-offer finds that copy.
    assert receiver.stored_files() == [SCAN]
    assert_identical(scans, receiver.incoming)
    status = sender_status(config)
    assert status["delivered"] == 1 and status["failed"] == []
    assert status["last_delivered"]["stored_path"] == SCAN, log
    receiver.stop()


def test_a_frame_injected_after_a_relayed_handshake_is_refused(tmp_path: Path, scans: Path) -> None:
    receiver = plain_receiver(tmp_path)
    payload = b"\x93NUMPY forged"
    forged = p.Offer(9999, "injected.npy", len(payload), 0, xxhash.xxh3_128(payload).digest())
    # Well-formed, with a tag the attacker cannot compute: here, any 16 bytes.
    send_through(tmp_path, receiver, Inject(p.encode(forged) + bytes(p.TAG_SIZE)))
    logged(receiver, DETECTED)
    assert "injected.npy" not in receiver.log  # refused before a field of it was read
    assert receiver.stored_files() == [SCAN]
    assert_identical(scans, receiver.incoming)
    assert receiver.partials() == []
    receiver.stop()


def test_a_plain_receiver_refuses_a_sender_that_cannot_authenticate_frames(
    tmp_path: Path,
) -> None:
    receiver = plain_receiver(tmp_path)
    old = RawSender(receiver.port, tls=False, authenticate=False)
    old.options = {}  # a sender from before frame authentication asks for nothing
    refusal = old.handshake()
    assert isinstance(refusal, p.Error) and refusal.code is p.ErrorCode.UNSUPPORTED_VERSION
    assert "upgrade scanxfer on this sender" in refusal.message
    logged(receiver, "upgrade scanxfer on the sender")
    old.close()
    receiver.stop()
