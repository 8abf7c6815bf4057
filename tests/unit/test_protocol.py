"""The wire protocol alone: two Connection objects joined in memory, no sockets."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanxfer import protocol as p

DIGEST = bytes(range(16))
CANCEL = {p.CANCEL_OPTION: p.CANCEL_ON}


def pump(source: bytes, conn: p.Connection, splits: list[int] | None = None) -> list[p.Event]:
    """Feed `source` to `conn` in pieces cut at `splits`; collect events, joining chunks."""
    cuts = sorted({c for c in (splits or []) if 0 < c < len(source)})
    events: list[p.Event] = []
    for start, end in zip([0, *cuts], [*cuts, len(source)], strict=True):
        conn.receive_data(source[start:end])
        events += drain(conn, answer_offers=True)
    return merge_chunks(events)


def drain(conn: p.Connection, answer_offers: bool = False) -> list[p.Event]:
    """All events available now; a receiver may answer each offer with READY from 0."""
    events = []
    while (event := conn.next_event()) is not p.NEED_DATA:
        if answer_offers and isinstance(event, p.Offer):
            conn.send(p.Ready(event.file_id, 0))
        if isinstance(event, p.DataChunk):  # copy: the view dies with the input buffer
            event = p.DataChunk(event.file_id, memoryview(bytes(event.data)))
        events.append(event)
        if isinstance(event, p.ConnectionClosed):
            break
    return events


def merge_chunks(events: list[p.Event]) -> list[p.Event]:
    merged: list[p.Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, p.DataChunk) and isinstance(last, p.DataChunk):
            joined = bytes(last.data) + bytes(event.data)
            merged[-1] = p.DataChunk(event.file_id, memoryview(joined))
        else:
            merged.append(event)
    return [bytes(e.data) if isinstance(e, p.DataChunk) else e for e in merged]


def open_pair(
    window: int = 8, options: dict[str, bytes] | None = None, echo: dict[str, bytes] | None = None
) -> tuple[p.Connection, p.Connection]:
    """A connection opened with HELLO `options`; WELCOME answers them with `echo`, or else
    as our receiver does."""
    sender, receiver = p.Connection(p.Role.SENDER), p.Connection(p.Role.RECEIVER, window)
    receiver.receive_data(sender.send(p.Hello("host", options=options or {})))
    hello = receiver.next_event()
    assert isinstance(hello, p.Hello) and p.negotiate(hello) == p.PROTOCOL_VERSION
    sender.receive_data(receiver.send(p.Challenge(p.PROTOCOL_VERSION, b"r" * p.NONCE_SIZE)))
    assert isinstance(sender.next_event(), p.Challenge)
    receiver.receive_data(sender.send(p.Authenticate(b"s" * p.NONCE_SIZE, b"p" * p.PROOF_SIZE)))
    assert isinstance(receiver.next_event(), p.Authenticate)
    echo = p.welcome_options(hello) if echo is None else echo
    welcome = p.Welcome("pi", window, b"w" * p.PROOF_SIZE, options=echo)
    sender.receive_data(receiver.send(welcome))
    assert isinstance(sender.next_event(), p.Welcome)
    assert sender.state is receiver.state is p.ConnState.OPEN
    return sender, receiver


def sender_stream(payloads: list[bytes]) -> tuple[bytes, list[p.Event]]:
    """Everything a sender puts on the wire for `payloads`, and the events a receiver must see."""
    sender, _ = open_pair(window=len(payloads) + 1)
    wire = bytearray()
    expected: list[p.Event] = []
    for file_id, payload in enumerate(payloads):
        offer = p.Offer(file_id, f"d/{file_id}.npy", len(payload), 7, DIGEST)
        wire += sender.send(offer)
        expected.append(offer)
    for file_id, payload in enumerate(payloads):
        sender.receive_data(p.encode(p.Ready(file_id, 0)))
        assert sender.next_event() == p.Ready(file_id, 0)
        header = p.DataHeader(file_id, 0, len(payload))
        wire += sender.send(header) + payload
        expected += [header, *([payload] if payload else []), p.DataEnd(file_id)]
    return bytes(wire), expected


def test_every_frame_round_trips() -> None:
    events = [
        p.Hello("host", 1, 3, {"auth": b"\x00\x01"}),
        p.Challenge(1, bytes(range(32))),
        p.Authenticate(b"n" * 32, b"p" * 32),
        p.Welcome("pi", 64, b"w" * 32, 1, {"x": b"y" * 32}),
        p.Error(p.ErrorCode.SHUTTING_DOWN, "bye now"),
        p.Bye(),
        p.Offer(2**32 - 1, "a/b/ü.npy", p.MAX_SIZE, -5, DIGEST),
        p.Ready(3, 2**40),
        p.DataHeader(3, 10, 20),
        p.Ack(3, p.Outcome.KEPT_BESIDE, "a/b~1.npy"),
        p.Nack(4, p.NackReason.NO_SPACE, True, "disk full"),
        p.Digest(5, DIGEST),
        p.Cancel(2**32 - 1),
    ]
    for event in events:
        frame = p.encode(event)
        kind, length = struct.unpack(">BI", frame[:5])
        assert length == len(frame) - 5
        assert p.decode_body(p.FrameType(kind), frame[5:]) == event


def test_a_whole_exchange_between_two_endpoints() -> None:
    sender, receiver = open_pair()
    payload = b"0123456789" * 1000
    receiver.receive_data(sender.send(p.Offer(1, "x.npy", len(payload), 1, DIGEST)))
    receiver.receive_data(sender.send(p.Offer(2, "y.npy", 5, 1, DIGEST)))
    assert [type(e) for e in drain(receiver)] == [p.Offer, p.Offer]
    sender.receive_data(receiver.send(p.Ready(1, 4000)))
    sender.receive_data(receiver.send(p.Ack(2, p.Outcome.DUPLICATE, "y.npy")))
    assert drain(sender) == [p.Ready(1, 4000), p.Ack(2, p.Outcome.DUPLICATE, "y.npy")]
    receiver.receive_data(sender.send(p.DataHeader(1, 4000, 6000)) + payload[4000:])
    events = merge_chunks(drain(receiver))
    assert events == [p.DataHeader(1, 4000, 6000), payload[4000:], p.DataEnd(1)]
    sender.receive_data(receiver.send(p.Ack(1, p.Outcome.STORED, "x.npy")))
    assert drain(sender) == [p.Ack(1, p.Outcome.STORED, "x.npy")]
    receiver.receive_data(sender.send(p.Bye()))
    receiver.receive_data(b"")
    assert drain(receiver) == [p.Bye(), p.ConnectionClosed()]
    assert not sender.files and not receiver.files


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    splits=st.lists(st.integers(min_value=0, max_value=3000), max_size=40),
)
def test_any_split_of_a_stream_decodes_to_the_same_events(
    payloads: list[bytes], splits: list[int]
) -> None:
    wire, expected = sender_stream(payloads)
    whole = pump(wire, open_pair(len(payloads) + 1)[1])
    split = pump(wire, open_pair(len(payloads) + 1)[1], splits)
    assert whole == split == expected


def test_a_reused_input_buffer_does_not_corrupt_a_partial_frame() -> None:
    wire, expected = sender_stream([b"abc" * 50, b"", b"z" * 999])
    receiver = open_pair(4)[1]
    buffer = bytearray(7)
    events: list[p.Event] = []
    for start in range(0, len(wire), 7):
        piece = wire[start : start + 7]
        buffer[: len(piece)] = piece
        receiver.receive_data(memoryview(buffer)[: len(piece)])
        events += drain(receiver, answer_offers=True)
        buffer[:] = b"\xff" * 7  # the caller reuses its buffer
    assert merge_chunks(events) == expected


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_garbage_raises_only_the_remote_error(garbage: bytes) -> None:
    receiver = p.Connection(p.Role.RECEIVER)
    receiver.receive_data(garbage)
    receiver.receive_data(b"")
    with pytest.raises(p.RemoteProtocolError):
        drain(receiver)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_streams_never_raise_anything_else(data: st.DataObject) -> None:
    wire, _ = sender_stream([b"payload" * 20, b"x"])
    mutated = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    receiver = open_pair(3)[1]
    with contextlib.suppress(p.RemoteProtocolError):
        pump(bytes(mutated), receiver)


def test_truncated_stream_raises_the_remote_error() -> None:
    wire, _ = sender_stream([b"q" * 100])
    for cut in (3, len(wire) - 50, len(wire) - 1):
        receiver = open_pair(2)[1]
        receiver.receive_data(wire[:cut])
        receiver.receive_data(b"")
        with pytest.raises(p.RemoteProtocolError, match="closed"):
            drain(receiver, answer_offers=True)


def test_an_oversized_frame_is_refused_before_its_body_arrives() -> None:
    receiver = p.Connection(p.Role.RECEIVER)
    receiver.receive_data(struct.pack(">BI", p.FrameType.HELLO, 2**32 - 1))
    with pytest.raises(p.RemoteProtocolError, match="exceeds"):
        receiver.next_event()


def test_a_huge_declared_payload_is_streamed_not_allocated() -> None:
    sender, receiver = open_pair()
    receiver.receive_data(sender.send(p.Offer(1, "big.npy", 2**63 - 1, 0, DIGEST)))
    drain(receiver)
    receiver.send(p.Ready(1, 0))
    tracemalloc.start()
    receiver.receive_data(p.encode(p.DataHeader(1, 0, 2**63 - 1)) + b"x" * 4096)
    events = drain(receiver)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [type(e) for e in events] == [p.DataHeader, p.DataChunk]
    assert peak < 1 << 20


def test_data_of_the_wrong_length_is_a_remote_error() -> None:
    sender, receiver = open_pair()
    receiver.receive_data(sender.send(p.Offer(1, "f.npy", 100, 0, DIGEST)))
    drain(receiver)
    receiver.send(p.Ready(1, 40))
    receiver.receive_data(p.encode(p.DataHeader(1, 40, 61)))
    with pytest.raises(p.RemoteProtocolError, match="must cover 40\\+60"):
        receiver.next_event()


@pytest.mark.parametrize(
    "frame",
    [
        p.Ready(9, 0),  # never offered
        p.Ack(1, p.Outcome.STORED, "f.npy"),  # stored before any data
        p.Ready(1, 101),  # past the end
    ],
)
def test_a_sender_refuses_illegal_answers(frame: p.Event) -> None:
    sender, _ = open_pair()
    sender.send(p.Offer(1, "f.npy", 100, 0, DIGEST))
    sender.receive_data(p.encode(frame))
    with pytest.raises(p.RemoteProtocolError):
        sender.next_event()


def test_the_window_is_enforced_on_both_sides() -> None:
    sender, receiver = open_pair(window=2)
    wire = b"".join(sender.send(p.Offer(i, f"{i}.npy", 1, 0, DIGEST)) for i in range(2))
    with pytest.raises(p.LocalProtocolError, match="more than 2"):
        sender.send(p.Offer(2, "2.npy", 1, 0, DIGEST))
    receiver.receive_data(wire + p.encode(p.Offer(2, "2.npy", 1, 0, DIGEST)))
    with pytest.raises(p.RemoteProtocolError, match="more than 2"):
        drain(receiver)


def test_offers_before_the_handshake_are_refused() -> None:
    receiver = p.Connection(p.Role.RECEIVER)
    receiver.receive_data(p.encode(p.Offer(1, "f.npy", 1, 0, DIGEST)))
    with pytest.raises(p.RemoteProtocolError, match="handshake"):
        receiver.next_event()


def test_a_peer_with_the_wrong_magic_is_refused() -> None:
    frame = bytearray(p.encode(p.Hello("x")))
    frame[5:13] = b"NOTSCANX"
    receiver = p.Connection(p.Role.RECEIVER)
    receiver.receive_data(bytes(frame))
    with pytest.raises(p.RemoteProtocolError, match="magic"):
        receiver.next_event()


def test_the_prototype_wire_format_is_refused() -> None:
    receiver = p.Connection(p.Role.RECEIVER)
    receiver.receive_data(struct.pack(">Q", 1234) + b"\x93NUMPY")
    with pytest.raises(p.RemoteProtocolError, match="frame type"):
        receiver.next_event()


def test_version_negotiation() -> None:
    assert p.negotiate(p.Hello("h", 1, 5)) == 1
    assert p.negotiate(p.Hello("h", 2, 5)) is None
    sender = p.Connection(p.Role.SENDER)
    sender.send(p.Hello("h", 1, 1))
    sender.receive_data(p.encode(p.Challenge(2, b"r" * p.NONCE_SIZE)))
    with pytest.raises(p.RemoteProtocolError) as caught:
        sender.next_event()
    assert caught.value.code is p.ErrorCode.UNSUPPORTED_VERSION


def test_bye_with_files_in_flight_is_refused() -> None:
    sender, _ = open_pair()
    sender.send(p.Offer(1, "f.npy", 1, 0, DIGEST))
    with pytest.raises(p.LocalProtocolError, match="in flight"):
        sender.send(p.Bye())


def test_an_error_frame_closes_the_connection() -> None:
    sender, receiver = open_pair()
    sender.receive_data(receiver.send(p.Error(p.ErrorCode.SHUTTING_DOWN, "stopping")))
    assert drain(sender) == [p.Error(p.ErrorCode.SHUTTING_DOWN, "stopping")]
    with pytest.raises(p.LocalProtocolError, match="closed"):
        sender.send(p.Offer(1, "f.npy", 1, 0, DIGEST))


def test_undecodable_path_bytes_survive_for_the_name_check() -> None:
    frame = p.encode(p.Offer(1, "ab", 1, 0, DIGEST)).replace(b"ab", b"a\xff")
    event = p.decode_body(p.FrameType.OFFER, frame[5:])
    assert isinstance(event, p.Offer) and event.path == "a\udcff"


def deferred_exchange() -> tuple[p.Connection, p.Connection]:
    """A file offered with a deferred digest, its payload sent: the DIGEST is due."""
    return send_one(p.DEFERRED_DIGEST)


def send_one(
    digest: bytes, options: dict[str, bytes] | None = None
) -> tuple[p.Connection, p.Connection]:
    """A 3-byte file offered with `digest`, its payload sent and received."""
    sender, receiver = open_pair(options=options)
    receiver.receive_data(sender.send(p.Offer(1, "big.npy", 3, 0, digest)))
    assert [type(e) for e in drain(receiver)] == [p.Offer]
    sender.receive_data(receiver.send(p.Ready(1, 0)))
    assert drain(sender) == [p.Ready(1, 0)]
    receiver.receive_data(sender.send(p.DataHeader(1, 0, 3)) + b"abc")
    assert [type(e) for e in drain(receiver)] == [p.DataHeader, p.DataChunk, p.DataEnd]
    return sender, receiver


def test_a_deferred_digest_follows_the_payload_before_any_answer() -> None:
    sender, receiver = deferred_exchange()
    with pytest.raises(p.LocalProtocolError, match="before its DIGEST"):
        receiver.send(p.Ack(1, p.Outcome.STORED, "big.npy"))
    receiver.receive_data(sender.send(p.Digest(1, DIGEST)))
    assert drain(receiver) == [p.Digest(1, DIGEST)]
    sender.receive_data(receiver.send(p.Ack(1, p.Outcome.STORED, "big.npy")))
    assert drain(sender) == [p.Ack(1, p.Outcome.STORED, "big.npy")]


@pytest.mark.parametrize(
    ("digest", "message"),
    [(DIGEST, "carried its digest"), (p.DEFERRED_DIGEST, "defers it again")],
)
def test_a_digest_frame_must_settle_a_deferred_offer(digest: bytes, message: str) -> None:
    # A deferred offer may not be deferred again; a digest-carrying one takes no DIGEST.
    _, receiver = send_one(p.DEFERRED_DIGEST if digest == p.DEFERRED_DIGEST else DIGEST)
    receiver.receive_data(p.encode(p.Digest(1, digest)))
    with pytest.raises(p.RemoteProtocolError, match=message):
        drain(receiver)


def test_a_digest_before_the_payload_is_refused() -> None:
    sender, receiver = open_pair()
    receiver.receive_data(sender.send(p.Offer(1, "big.npy", 3, 0, p.DEFERRED_DIGEST)))
    receiver.receive_data(p.encode(p.Digest(1, DIGEST)))
    with pytest.raises(p.RemoteProtocolError, match="offered"):
        drain(receiver)


# -- CANCEL --------------------------------------------------------------------------------


def offered(options: dict[str, bytes] | None) -> tuple[p.Connection, p.Connection]:
    """File 1 (3 bytes) offered and seen by the receiver: OFFERED on both ends."""
    sender, receiver = open_pair(options=options)
    receiver.receive_data(sender.send(p.Offer(1, "scan.npy", 3, 0, DIGEST)))
    assert drain(receiver) == [p.Offer(1, "scan.npy", 3, 0, DIGEST)]
    return sender, receiver


def ready(options: dict[str, bytes] | None) -> tuple[p.Connection, p.Connection]:
    """File 1 READY on both ends."""
    sender, receiver = offered(options)
    sender.receive_data(receiver.send(p.Ready(1, 0)))
    assert drain(sender) == [p.Ready(1, 0)]
    return sender, receiver


def test_the_receiver_echoes_the_cancel_option_only_when_asked() -> None:
    assert p.welcome_options(p.Hello("h", options=CANCEL)) == CANCEL
    assert p.welcome_options(p.Hello("h")) == {}
    assert p.welcome_options(p.Hello("h", options={p.CANCEL_OPTION: b"\x02"})) == {}
    asked, plain = open_pair(options=CANCEL), open_pair()
    assert [conn.can_cancel for conn in (*asked, *plain)] == [True, True, False, False]


@pytest.mark.parametrize(
    ("hello", "welcome"),
    [({}, CANCEL), (CANCEL, {}), ({p.INSTANCE_OPTION: b"i"}, {"other": b"\x01"})],
    ids=["echo-nobody-asked-for", "not-echoed", "other-options"],
)
def test_cancel_needs_both_the_request_and_its_echo(
    hello: dict[str, bytes], welcome: dict[str, bytes]
) -> None:
    # An unknown option is ignored by either end, and so is an echo nobody asked for.
    sender, receiver = open_pair(options=hello, echo=welcome)
    assert not sender.can_cancel and not receiver.can_cancel


def test_a_cancel_frame_is_its_file_id_alone() -> None:
    assert p.encode(p.Cancel(7)) == bytes.fromhex("16 00000004 00000007")
    for body in (b"\x00\x00\x07", b"\x00\x00\x00\x07\x00"):
        with pytest.raises(p.RemoteProtocolError, match=r"too short|trailing bytes"):
            p.decode_body(p.FrameType.CANCEL, body)


def test_a_ready_file_is_cancelled_instead_of_its_data() -> None:
    sender, receiver = ready(CANCEL)
    receiver.receive_data(sender.send(p.Cancel(1)))
    assert drain(receiver) == [p.Cancel(1)]
    assert not sender.files and not receiver.files
    # No answer for it, and its id is free again.
    with pytest.raises(p.LocalProtocolError, match="unknown file id 1"):
        receiver.send(p.Nack(1, p.NackReason.BUSY, True, "busy"))
    receiver.receive_data(sender.send(p.Offer(1, "scan.npy", 4, 1, DIGEST)))
    assert drain(receiver) == [p.Offer(1, "scan.npy", 4, 1, DIGEST)]


def test_a_deferred_file_is_cancelled_after_its_payload_instead_of_its_digest() -> None:
    sender, receiver = send_one(p.DEFERRED_DIGEST, CANCEL)
    receiver.receive_data(sender.send(p.Cancel(1)))
    assert drain(receiver) == [p.Cancel(1)]
    assert not sender.files and not receiver.files
    with pytest.raises(p.LocalProtocolError, match="unknown file id 1"):
        sender.send(p.Digest(1, DIGEST))
    with pytest.raises(p.LocalProtocolError, match="unknown file id 1"):
        receiver.send(p.Ack(1, p.Outcome.STORED, "big.npy"))
    receiver.receive_data(sender.send(p.Bye()))
    assert drain(receiver) == [p.Bye()]


def _digest_sent() -> tuple[p.Connection, p.Connection]:
    sender, receiver = send_one(p.DEFERRED_DIGEST, CANCEL)
    receiver.receive_data(sender.send(p.Digest(1, DIGEST)))
    assert drain(receiver) == [p.Digest(1, DIGEST)]
    return sender, receiver


def _nothing_in_flight() -> tuple[p.Connection, p.Connection]:
    return open_pair(options=CANCEL)


@pytest.mark.parametrize(
    ("situation", "message"),
    [
        (lambda: ready(None), "did not negotiate"),
        (lambda: send_one(p.DEFERRED_DIGEST), "did not negotiate"),
        (lambda: offered(CANCEL), "while it is offered"),
        (lambda: send_one(DIGEST, CANCEL), "while it is sent"),
        (_digest_sent, "while it is sent"),
        (_nothing_in_flight, "unknown file id 1"),
    ],
    ids=[
        "not-negotiated",
        "not-negotiated-digest-due",
        "offered",
        "sent",
        "after-digest",
        "unknown",
    ],
)
def test_cancel_anywhere_else_is_a_protocol_error_on_both_ends(
    situation: Callable[[], tuple[p.Connection, p.Connection]], message: str
) -> None:
    sender, receiver = situation()
    before = table(sender)
    with pytest.raises(p.LocalProtocolError, match=message):
        sender.send(p.Cancel(1))
    assert table(sender) == before  # a refused send changes nothing
    receiver.receive_data(p.encode(p.Cancel(1)))
    with pytest.raises(p.RemoteProtocolError, match=message):
        drain(receiver)


def table(conn: p.Connection) -> dict[int, tuple[p.FileState, bool]]:
    return {file_id: (entry.state, entry.digest_due) for file_id, entry in conn.files.items()}


def test_only_a_sender_cancels() -> None:
    sender, receiver = ready(CANCEL)
    with pytest.raises(p.LocalProtocolError, match="receiver cannot send Cancel"):
        receiver.send(p.Cancel(1))
    sender.receive_data(p.encode(p.Cancel(1)))
    with pytest.raises(p.RemoteProtocolError, match="sender cannot receive Cancel"):
        drain(sender)


# -- ASK_DIGEST ----------------------------------------------------------------------------

ASK = {p.ASK_DIGEST_OPTION: p.ASK_DIGEST_ON}
BOTH = {**CANCEL, **ASK}


def deferred_offered(options: dict[str, bytes] | None) -> tuple[p.Connection, p.Connection]:
    """File 1 (3 bytes) offered with a deferred digest and seen by the receiver."""
    sender, receiver = open_pair(options=options)
    receiver.receive_data(sender.send(p.Offer(1, "big.npy", 3, 0, p.DEFERRED_DIGEST)))
    assert drain(receiver) == [p.Offer(1, "big.npy", 3, 0, p.DEFERRED_DIGEST)]
    return sender, receiver


def asked(options: dict[str, bytes] = BOTH) -> tuple[p.Connection, p.Connection]:
    """File 1 in state DIGEST_ASKED on both ends."""
    sender, receiver = deferred_offered(options)
    sender.receive_data(receiver.send(p.AskDigest(1)))
    assert drain(sender) == [p.AskDigest(1)]
    assert sender.files[1].state is receiver.files[1].state is p.FileState.DIGEST_ASKED
    return sender, receiver


def digest_told() -> tuple[p.Connection, p.Connection]:
    """File 1's digest sent at the receiver's request: OFFERED again, the digest known."""
    sender, receiver = asked()
    receiver.receive_data(sender.send(p.Digest(1, DIGEST)))
    assert drain(receiver) == [p.Digest(1, DIGEST)]
    assert table(sender) == table(receiver) == {1: (p.FileState.OFFERED, False)}
    return sender, receiver


def test_ask_digest_is_negotiated_like_cancel_and_independently_of_it() -> None:
    assert p.welcome_options(p.Hello("h", options=ASK)) == ASK
    assert p.welcome_options(p.Hello("h", options=BOTH)) == BOTH
    assert p.welcome_options(p.Hello("h", options={p.ASK_DIGEST_OPTION: b"\x02"})) == {}
    for hello, welcome, negotiated in [
        (ASK, None, True),
        (ASK, {}, False),  # an old receiver: no echo
        ({}, ASK, False),  # an echo nobody asked for
        (CANCEL, None, False),
    ]:
        sender, receiver = open_pair(options=hello, echo=welcome)
        assert sender.can_ask_digest is receiver.can_ask_digest is negotiated, (hello, welcome)
    sender, _ = open_pair(options=ASK)
    assert not sender.can_cancel


def test_an_ask_digest_frame_is_its_file_id_alone() -> None:
    assert p.encode(p.AskDigest(9)) == bytes.fromhex("17 00000004 00000009")
    assert p.decode_body(p.FrameType.ASK_DIGEST, bytes.fromhex("00000009")) == p.AskDigest(9)
    with pytest.raises(p.RemoteProtocolError, match="trailing bytes"):
        p.decode_body(p.FrameType.ASK_DIGEST, b"\x00\x00\x00\x09\x00")


def test_a_digest_told_before_the_data_lets_the_receiver_answer_duplicate() -> None:
    sender, receiver = digest_told()
    sender.receive_data(receiver.send(p.Ack(1, p.Outcome.DUPLICATE, "big.npy")))
    assert drain(sender) == [p.Ack(1, p.Outcome.DUPLICATE, "big.npy")]
    assert not sender.files and not receiver.files


def test_after_an_early_digest_the_payload_is_answered_without_another_digest() -> None:
    sender, receiver = digest_told()
    sender.receive_data(receiver.send(p.Ready(1, 1)))
    assert drain(sender) == [p.Ready(1, 1)]
    receiver.receive_data(sender.send(p.DataHeader(1, 1, 2)) + b"bc")
    assert [type(e) for e in drain(receiver)] == [p.DataHeader, p.DataChunk, p.DataEnd]
    # Its answer is due now: the digest came first, so none follows the payload.
    with pytest.raises(p.LocalProtocolError, match="whose offer carried its digest"):
        sender.send(p.Digest(1, DIGEST))
    with pytest.raises(p.LocalProtocolError, match="while it is sent"):
        sender.send(p.Cancel(1))
    sender.receive_data(receiver.send(p.Ack(1, p.Outcome.STORED, "big.npy")))
    assert drain(sender) == [p.Ack(1, p.Outcome.STORED, "big.npy")]


def test_a_file_whose_digest_was_asked_for_can_be_withdrawn() -> None:
    sender, receiver = asked()
    receiver.receive_data(sender.send(p.Cancel(1)))
    assert drain(receiver) == [p.Cancel(1)]
    assert not sender.files and not receiver.files


def test_while_the_digest_is_asked_for_nothing_else_may_come_for_the_file() -> None:
    for answer in (
        p.Ready(1, 0),
        p.Ack(1, p.Outcome.DUPLICATE, "big.npy"),
        p.Nack(1, p.NackReason.BUSY, True, "busy"),
        p.AskDigest(1),
    ):
        sender, receiver = asked()
        with pytest.raises(p.LocalProtocolError, match="while it is digest asked"):
            receiver.send(answer)
        sender.receive_data(p.encode(answer))
        with pytest.raises(p.RemoteProtocolError, match="while it is digest asked"):
            drain(sender)
    sender, receiver = asked()
    with pytest.raises(p.LocalProtocolError, match="defers it again"):
        sender.send(p.Digest(1, p.DEFERRED_DIGEST))


def _asked_without_negotiation() -> tuple[p.Connection, p.Connection]:
    return deferred_offered(CANCEL)


def _asked_for_an_offer_with_its_digest() -> tuple[p.Connection, p.Connection]:
    sender, receiver = open_pair(options=BOTH)
    receiver.receive_data(sender.send(p.Offer(1, "small.npy", 3, 0, DIGEST)))
    drain(receiver)
    return sender, receiver


def _asked_when_ready() -> tuple[p.Connection, p.Connection]:
    sender, receiver = deferred_offered(BOTH)
    sender.receive_data(receiver.send(p.Ready(1, 0)))
    drain(sender)
    return sender, receiver


@pytest.mark.parametrize(
    ("situation", "message"),
    [
        (_asked_without_negotiation, "did not negotiate"),
        (_asked_for_an_offer_with_its_digest, "whose offer carried its digest"),
        (_asked_when_ready, "while it is ready"),
        (lambda: open_pair(options=BOTH), "unknown file id 1"),
    ],
    ids=["not-negotiated", "digest-in-offer", "ready", "unknown"],
)
def test_ask_digest_anywhere_else_is_a_protocol_error_on_both_ends(
    situation: Callable[[], tuple[p.Connection, p.Connection]], message: str
) -> None:
    sender, receiver = situation()
    before = table(receiver)
    with pytest.raises(p.LocalProtocolError, match=message):
        receiver.send(p.AskDigest(1))
    assert table(receiver) == before
    sender.receive_data(p.encode(p.AskDigest(1)))
    with pytest.raises(p.RemoteProtocolError, match=message):
        drain(sender)


def test_only_a_receiver_asks_for_a_digest() -> None:
    sender, _ = deferred_offered(BOTH)
    with pytest.raises(p.LocalProtocolError, match="sender cannot send AskDigest"):
        sender.send(p.AskDigest(1))
