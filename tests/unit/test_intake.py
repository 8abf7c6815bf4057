"""The receiver's intake in-process: a sans-IO sender joined in memory, a real Store.

No sockets and no threads: the sender's `protocol.Connection` puts frames and payload on a
"wire" of bytes, the receiver's own `Connection` parses them into events for `Intake`, as
the connection handler does, and the answers travel back the same way.  What the
intake decides (READY, ACK, NACK and their reasons) and what the store holds afterwards
are checked; tests/integration covers the same over TLS with real processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from scanxfer import protocol as p
from scanxfer.config import ReceiverConfig, load_receiver_config
from scanxfer.protocol.integrity import SEGMENT
from scanxfer.receiver import ReceivedFile, Services, Stats
from scanxfer.receiver.after_store import AfterStore
from scanxfer.receiver.gate import Gate
from scanxfer.receiver.intake import Intake
from scanxfer.store import PARTIAL_FOLDER, Store, StoreLimits

SENDER = "scanner"
MTIME_NS = 1_700_000_000_123_456_789
PAYLOAD = bytes(range(256)) * 40
FRAME_KEY = bytes(32)  # for the wires that authenticate their frames (plain TCP)
FRAME_AUTH = {p.FRAME_AUTH_OPTION: p.FRAME_AUTH_ON}


def digest(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


class Wire:
    """A sender endpoint joined in memory to an `Intake`, through the receiver's parser."""

    def __init__(
        self,
        config: ReceiverConfig,
        store: Store,
        hooks: list[AfterStore],
        options: dict[str, bytes] | None = None,
        services: Services | None = None,
    ) -> None:
        self.sender = p.Connection(p.Role.SENDER)
        self.receiver = p.Connection(p.Role.RECEIVER, config.window)
        self.sender.use_frame_key(FRAME_KEY)
        self.receiver.use_frame_key(FRAME_KEY)
        self._handshake(config.window, options or {})
        self.outbox = bytearray()
        if services is None:  # several wires share one to stand for one receiver
            services = Services(store, Stats(), Gate(config), after_store=tuple(hooks))
        self.stats = services.stats
        self.intake = Intake(
            "127.0.0.1:4000",
            SENDER,
            config,
            services,
            self._reply,
            ask_digests=self.receiver.can_ask_digest,
        )

    def _handshake(self, window: int, options: dict[str, bytes]) -> None:
        """Both ends to OPEN; the key proofs are the gate's business, not tested here."""
        self.receiver.receive_data(self.sender.send(p.Hello(SENDER, options=options)))
        hello = self.receiver.next_event()
        assert isinstance(hello, p.Hello)
        self.sender.receive_data(self.receiver.send(p.Challenge(1, b"r" * p.NONCE_SIZE)))
        self.sender.next_event()
        self.receiver.receive_data(
            self.sender.send(p.Authenticate(b"s" * p.NONCE_SIZE, b"p" * p.PROOF_SIZE))
        )
        self.receiver.next_event()
        echo = p.welcome_options(hello, authenticate_frames=True)  # when the sender asks
        welcome = p.Welcome("pi", window, b"w" * p.PROOF_SIZE, options=echo)
        self.sender.receive_data(self.receiver.send(welcome))
        self.sender.next_event()
        assert self.sender.state is self.receiver.state is p.ConnState.OPEN

    def _reply(self, event: p.Event) -> None:
        self.outbox += self.receiver.send(event)

    def send(self, *items: p.Event | bytes) -> list[p.Event]:
        """Put events (and raw payload bytes) on the wire; return the answers they bring.

        The receiving side works as the handler does for one read: every event handed to
        the intake, then the group commit of the files completed in it.
        """
        wire = b"".join(
            item if isinstance(item, bytes) else self.sender.send(item) for item in items
        )
        self.receiver.receive_data(wire)
        while (event := self.receiver.next_event()) is not p.NEED_DATA:
            assert self.intake.on_event(event), event
        self.intake.acknowledge_placed()
        if self.outbox:  # b"" would tell the sender the receiver closed
            self.sender.receive_data(bytes(self.outbox))
            self.outbox.clear()
        answers = []
        while (answer := self.sender.next_event()) is not p.NEED_DATA:
            answers.append(answer)
        return answers

    def deliver(self, file_id: int, path: str, data: bytes) -> list[p.Event]:
        """Offer a file and, if READY, send its bytes; the answers to both."""
        answers = self.send(p.Offer(file_id, path, len(data), MTIME_NS, digest(data)))
        if answers != [p.Ready(file_id, 0)]:
            return answers
        return [*answers, *self.send(p.DataHeader(file_id, 0, len(data)), data)]


def receiver_config(tmp_path: Path, **settings: str) -> ReceiverConfig:
    values = {
        "state_dir": str(tmp_path / "state"),
        "tls": "false",
        "min_free_space": "0",
        **settings,
    }
    path = tmp_path / "receiver.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    return load_receiver_config(path)


class Harness:
    """A config, a store in tmp_path and the files the after-store hook was told of."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.received: list[ReceivedFile] = []
        self.store: Store | None = None

    def wire(
        self,
        hooks: list[AfterStore] | None = None,
        options: dict[str, bytes] | None = None,
        **settings: str,
    ) -> Wire:
        config = receiver_config(self.tmp_path, **settings)
        limits = StoreLimits(config.max_path_length, config.max_path_depth)
        self.store = Store(config.incoming_dir, config.partial_dir, limits)
        return Wire(config, self.store, [*(hooks or []), self.received.append], options)

    @property
    def incoming(self) -> Path:
        assert self.store is not None
        return self.store.incoming_dir

    def partials(self) -> list[str]:
        assert self.store is not None
        return os.listdir(self.store.partial_dir)

    def stored(self) -> list[str]:
        """The names in the incoming folder, but for the partial folder inside it."""
        return sorted(name for name in os.listdir(self.incoming) if name != PARTIAL_FOLDER)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield Harness(tmp_path)


def test_an_offer_is_stored_and_acknowledged(harness: Harness) -> None:
    wire = harness.wire()
    answers = wire.deliver(1, "day1/scan.npy", PAYLOAD)
    assert answers == [p.Ready(1, 0), p.Ack(1, p.Outcome.STORED, "day1/scan.npy")]
    stored = harness.incoming / "day1" / "scan.npy"
    assert stored.read_bytes() == PAYLOAD
    assert stored.stat().st_mtime_ns == MTIME_NS
    assert harness.partials() == []
    assert (wire.stats.files, wire.stats.bytes) == (1, len(PAYLOAD))
    assert harness.received == [
        ReceivedFile(
            stored, "day1/scan.npy", len(PAYLOAD), digest(PAYLOAD), SENDER, wire.intake.peer
        )
    ]


def test_the_hook_is_called_once_for_each_file_of_a_batch(harness: Harness) -> None:
    wire = harness.wire()
    files = {f"b/{n}.npy": bytes([n]) * (100 + n) for n in range(5)}
    offers = [
        p.Offer(n, path, len(data), MTIME_NS, digest(data))
        for n, (path, data) in enumerate(files.items())
    ]
    assert wire.send(*offers) == [p.Ready(n, 0) for n in range(5)]
    payloads: list[p.Event | bytes] = []
    for n, data in enumerate(files.values()):
        payloads += [p.DataHeader(n, 0, len(data)), data]
    # All five complete in one read: one group commit, five ACKs, five calls.
    answers = wire.send(*payloads)
    assert answers == [p.Ack(n, p.Outcome.STORED, path) for n, path in enumerate(files)]
    assert sorted(r.name for r in harness.received) == sorted(files)
    assert all(r.digest == digest(files[r.name]) for r in harness.received)


def test_a_file_over_max_file_size_is_refused_before_its_bytes(harness: Harness) -> None:
    wire = harness.wire(max_file_size="1000")
    answers = wire.send(p.Offer(1, "big.npy", 1001, MTIME_NS, digest(b"x")))
    assert answers == [
        p.Nack(1, p.NackReason.TOO_LARGE, False, "1001 bytes exceeds max_file_size 1000")
    ]
    assert harness.partials() == []
    assert harness.stored() == []
    assert harness.received == []


def test_a_file_that_would_eat_into_min_free_space_may_be_retried(harness: Harness) -> None:
    wire = harness.wire(min_free_space="1000TiB")
    [nack] = wire.send(p.Offer(1, "a.npy", len(PAYLOAD), MTIME_NS, digest(PAYLOAD)))
    assert isinstance(nack, p.Nack)
    assert (nack.reason, nack.retryable) == (p.NackReason.NO_SPACE, True)
    assert nack.message.startswith("10.0 KiB do not fit: ")
    assert nack.message.endswith("of which 1000.0 TiB stay free (min_free_space)")


def test_a_bad_name_is_final_even_when_space_is_short(harness: Harness) -> None:
    # Answered NO_SPACE, a bad name would be offered again and again.
    wire = harness.wire(min_free_space="1000TiB")
    [nack] = wire.send(p.Offer(1, "../escape.npy", 10, MTIME_NS, digest(b"x")))
    assert isinstance(nack, p.Nack)
    assert (nack.reason, nack.retryable) == (p.NackReason.BAD_NAME, False)


def test_an_identical_file_is_a_duplicate_without_its_bytes(harness: Harness) -> None:
    wire = harness.wire()
    wire.deliver(1, "scan.npy", PAYLOAD)
    harness.received.clear()
    answers = wire.send(p.Offer(2, "scan.npy", len(PAYLOAD), MTIME_NS, digest(PAYLOAD)))
    assert answers == [p.Ack(2, p.Outcome.DUPLICATE, "scan.npy")]
    assert harness.stored() == ["scan.npy"]
    assert harness.received == []  # nothing new stored: nothing to tell a forwarder


def test_different_content_under_a_stored_name_is_kept_beside(harness: Harness) -> None:
    wire = harness.wire()
    wire.deliver(1, "scan.npy", PAYLOAD)
    answers = wire.deliver(2, "scan.npy", PAYLOAD[::-1])
    assert answers[-1] == p.Ack(2, p.Outcome.KEPT_BESIDE, "scan~1.npy")
    assert (harness.incoming / "scan~1.npy").read_bytes() == PAYLOAD[::-1]
    assert [r.name for r in harness.received] == ["scan.npy", "scan~1.npy"]


def test_bytes_that_do_not_match_the_digest_are_dropped(harness: Harness) -> None:
    wire = harness.wire()
    offer = p.Offer(1, "scan.npy", len(PAYLOAD), MTIME_NS, digest(b"another file"))
    assert wire.send(offer) == [p.Ready(1, 0)]
    [nack] = wire.send(p.DataHeader(1, 0, len(PAYLOAD)), PAYLOAD)
    assert isinstance(nack, p.Nack)
    assert (nack.file_id, nack.reason, nack.retryable) == (1, p.NackReason.DIGEST_MISMATCH, True)
    assert "do not match the sender's digest" in nack.message
    assert harness.stored() == []
    assert harness.partials() == []
    assert harness.received == []


def test_a_deferred_digest_reaches_the_hook(harness: Harness) -> None:
    wire = harness.wire()
    offer = p.Offer(1, "scan.npy", len(PAYLOAD), MTIME_NS, p.DEFERRED_DIGEST)
    assert wire.send(offer) == [p.Ready(1, 0)]
    assert wire.send(p.DataHeader(1, 0, len(PAYLOAD)), PAYLOAD) == []  # its DIGEST is due
    assert wire.send(p.Digest(1, digest(PAYLOAD))) == [p.Ack(1, p.Outcome.STORED, "scan.npy")]
    [received] = harness.received
    assert received.digest == digest(PAYLOAD)


def test_a_failing_hook_neither_loses_nor_unacknowledges_the_file(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(received: ReceivedFile) -> None:
        raise OSError("the bucket is unreachable")

    wire = harness.wire(hooks=[broken])
    with caplog.at_level(logging.ERROR, "scanxfer.receiver"):
        answers = wire.deliver(1, "scan.npy", PAYLOAD)
        # The connection goes on: the next file is taken as usual.
        later = wire.deliver(2, "later.npy", PAYLOAD[::-1])
    assert answers[-1] == p.Ack(1, p.Outcome.STORED, "scan.npy")
    assert later[-1] == p.Ack(2, p.Outcome.STORED, "later.npy")
    assert (harness.incoming / "scan.npy").read_bytes() == PAYLOAD
    # A failing hook does not keep the others from hearing of the file.
    assert [r.name for r in harness.received] == ["scan.npy", "later.npy"]
    [failure, _] = [r for r in caplog.records if "after-store hook" in r.message]
    assert "broken failed on scan.npy; the file stays stored" in failure.message
    assert failure.exc_info is not None


# -- a deferred digest asked for before any data (ASK_DIGEST) ---------------------------------

ASK = {p.ASK_DIGEST_OPTION: p.ASK_DIGEST_ON}


def deferred(file_id: int, data: bytes, path: str = "scan.npy") -> p.Offer:
    return p.Offer(file_id, path, len(data), MTIME_NS, p.DEFERRED_DIGEST)


def store_deferred(wire: Wire, file_id: int, data: bytes, path: str = "scan.npy") -> p.Event:
    """A deferred-digest file sent whole to an empty path, as today: its ACK."""
    assert wire.send(deferred(file_id, data, path)) == [p.Ready(file_id, 0)]
    assert wire.send(p.DataHeader(file_id, 0, len(data)), data) == []
    [answer] = wire.send(p.Digest(file_id, digest(data)))
    return answer


def leave_whole_partial(harness: Harness, data: bytes) -> None:
    """A connection that carried every byte of a deferred file and ended before its DIGEST."""
    first = harness.wire(options=ASK)
    assert first.send(deferred(1, data)) == [p.Ready(1, 0)]
    assert first.send(p.DataHeader(1, 0, len(data)), data) == []
    first.intake.finish()
    assert [name for name in harness.partials() if name.endswith(".part")]
    assert harness.stored() == []


def test_a_stored_file_offered_with_a_deferred_digest_is_a_duplicate_without_its_bytes(
    harness: Harness,
) -> None:
    wire = harness.wire(options=ASK)
    assert store_deferred(wire, 1, PAYLOAD) == p.Ack(1, p.Outcome.STORED, "scan.npy")
    harness.received.clear()
    # Offered again, as by a sender killed before it recorded the ACK: the digest first.
    assert wire.send(deferred(2, PAYLOAD)) == [p.AskDigest(2)]
    assert wire.send(p.Digest(2, digest(PAYLOAD))) == [p.Ack(2, p.Outcome.DUPLICATE, "scan.npy")]
    assert harness.stored() == ["scan.npy"]
    assert harness.partials() == []
    assert harness.received == []


def test_another_file_of_the_same_size_is_asked_for_then_sent_and_kept_beside(
    harness: Harness,
) -> None:
    wire = harness.wire(options=ASK)
    store_deferred(wire, 1, PAYLOAD)
    other = PAYLOAD[::-1]
    assert wire.send(deferred(2, other)) == [p.AskDigest(2)]
    assert wire.send(p.Digest(2, digest(other))) == [p.Ready(2, 0)]
    # The digest came first: the answer follows the payload, with no DIGEST after it.
    answers = wire.send(p.DataHeader(2, 0, len(other)), other)
    assert answers == [p.Ack(2, p.Outcome.KEPT_BESIDE, "scan~1.npy")]
    assert (harness.incoming / "scan~1.npy").read_bytes() == other
    assert harness.received[-1].digest == digest(other)


def test_a_file_of_another_size_is_not_asked_for(harness: Harness) -> None:
    wire = harness.wire(options=ASK)
    store_deferred(wire, 1, PAYLOAD)
    assert wire.send(deferred(2, PAYLOAD + b"!")) == [p.Ready(2, 0)]


def test_a_whole_partial_is_stored_without_its_bytes_once_its_digest_matches(
    harness: Harness,
) -> None:
    leave_whole_partial(harness, PAYLOAD)
    wire = harness.wire(options=ASK)
    assert wire.send(deferred(2, PAYLOAD)) == [p.AskDigest(2)]
    # Checked: READY at its end, so the DATA that completes the file carries no byte.
    assert wire.send(p.Digest(2, digest(PAYLOAD))) == [p.Ready(2, len(PAYLOAD))]
    answers = wire.send(p.DataHeader(2, len(PAYLOAD), 0))
    assert answers == [p.Ack(2, p.Outcome.STORED, "scan.npy")]
    stored = harness.incoming / "scan.npy"
    assert stored.read_bytes() == PAYLOAD and stored.stat().st_mtime_ns == MTIME_NS
    assert harness.partials() == []
    assert [(r.name, r.digest) for r in harness.received] == [("scan.npy", digest(PAYLOAD))]
    assert (wire.stats.files, wire.stats.bytes) == (1, 0)  # not a byte came on this connection


def test_a_whole_partial_that_does_not_match_the_digest_is_dropped_and_sent_again(
    harness: Harness,
) -> None:
    leave_whole_partial(harness, PAYLOAD)
    damaged = PAYLOAD[:-1] + b"!"  # held bytes damaged, the same version offered
    wire = harness.wire(options=ASK)
    assert wire.send(deferred(2, damaged)) == [p.AskDigest(2)]
    assert wire.send(p.Digest(2, digest(damaged))) == [p.Ready(2, 0)]
    answers = wire.send(p.DataHeader(2, 0, len(damaged)), damaged)
    assert answers == [p.Ack(2, p.Outcome.STORED, "scan.npy")]
    assert (harness.incoming / "scan.npy").read_bytes() == damaged
    assert harness.partials() == []


def test_a_part_held_still_resumes_at_its_offset_without_a_question(harness: Harness) -> None:
    first = harness.wire(options=ASK)
    assert first.send(deferred(1, PAYLOAD)) == [p.Ready(1, 0)]
    half = len(PAYLOAD) // 2
    first.receiver.receive_data(first.sender.send(p.DataHeader(1, 0, len(PAYLOAD))))
    first.receiver.receive_data(PAYLOAD[:half])
    while (event := first.receiver.next_event()) is not p.NEED_DATA:
        first.intake.on_event(event)
    first.intake.finish()  # cut mid-payload
    wire = harness.wire(options=ASK)
    assert wire.send(deferred(2, PAYLOAD)) == [p.Ready(2, half)]
    assert wire.send(p.DataHeader(2, half, len(PAYLOAD) - half), PAYLOAD[half:]) == []
    assert wire.send(p.Digest(2, digest(PAYLOAD))) == [p.Ack(2, p.Outcome.STORED, "scan.npy")]
    assert (harness.incoming / "scan.npy").read_bytes() == PAYLOAD


def test_a_file_withdrawn_instead_of_its_digest_takes_its_partial_along(
    harness: Harness,
) -> None:
    leave_whole_partial(harness, PAYLOAD)
    wire = harness.wire(options={**ASK, p.CANCEL_OPTION: p.CANCEL_ON})
    assert wire.send(deferred(2, PAYLOAD)) == [p.AskDigest(2)]
    assert wire.send(p.Cancel(2)) == []
    assert harness.partials() == [] and harness.stored() == []


def test_a_sender_that_did_not_ask_gets_ready_and_sends_the_bytes_as_before(
    harness: Harness,
) -> None:
    wire = harness.wire()
    store_deferred(wire, 1, PAYLOAD)
    assert wire.send(deferred(2, PAYLOAD)) == [p.Ready(2, 0)]
    assert wire.send(p.DataHeader(2, 0, len(PAYLOAD)), PAYLOAD) == []
    assert wire.send(p.Digest(2, digest(PAYLOAD))) == [p.Ack(2, p.Outcome.DUPLICATE, "scan.npy")]


BIG = bytes(range(256)) * (3 * SEGMENT // 256)  # three segments of frame authentication


def cut_mid_payload(wire: Wire, start: int, end: int) -> None:
    """Send BIG[start:end] of file 1, READY at `start`; then the connection ends."""
    header = wire.sender.send(p.DataHeader(1, start, len(BIG) - start))
    wire.receiver.receive_data(header + wire.sender.send_payload(BIG[start:end]))
    while (event := wire.receiver.next_event()) is not p.NEED_DATA:
        wire.intake.on_event(event)
    wire.intake.finish()


def test_a_cut_payload_resumes_after_its_last_checked_segment(harness: Harness) -> None:
    """With frame authentication only bytes whose segment tag checked out reach the store."""
    offer = p.Offer(1, "scan.npy", len(BIG), MTIME_NS, digest(BIG))
    first = harness.wire(options=FRAME_AUTH)
    assert first.receiver.authenticates_frames
    assert first.send(offer) == [p.Ready(1, 0)]
    cut_mid_payload(first, 0, SEGMENT + SEGMENT // 2)
    second = harness.wire(options=FRAME_AUTH)
    assert second.send(offer) == [p.Ready(1, SEGMENT)]
    cut_mid_payload(second, SEGMENT, SEGMENT + 10)  # not a whole segment: nothing more
    wire = harness.wire(options=FRAME_AUTH)
    assert wire.send(offer) == [p.Ready(1, SEGMENT)]
    rest = wire.sender.send(p.DataHeader(1, SEGMENT, len(BIG) - SEGMENT))
    assert wire.send(rest + wire.sender.send_payload(BIG[SEGMENT:])) == [
        p.Ack(1, p.Outcome.STORED, "scan.npy")
    ]
    assert (harness.incoming / "scan.npy").read_bytes() == BIG
