"""Properties of the wire protocol over generated input: what any peer can make it do.

test_protocol.py checks chosen examples; these draw frames, byte soup and damaged recordings
of whole connections, in both roles, and hold the protocol to its promise for bad input:
events or a RemoteProtocolError, nothing else, and never memory sized by the peer.
"""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scanxfer import protocol as p
from scanxfer.protocol.frames import FRAME_HEAD
from tests.fuzz.peers import Peer, opening, pieces, play, record_exchange

ROLES = st.sampled_from(list(p.Role))
PAYLOADS = (b"a" * 50, b"", b"d" * 7, b"n", b"m" * 30, b"z" * 90)


def _fixed(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


def _unsigned(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, 2**bits - 1)


# Any text, and any bytes at all: undecodable UTF-8 must survive the trip (surrogateescape).
TEXT = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)
OPTIONS = st.dictionaries(TEXT, st.binary(max_size=30), max_size=4)
EVENTS: dict[p.FrameType, st.SearchStrategy[p.Event]] = {
    p.FrameType.HELLO: st.builds(p.Hello, TEXT, _unsigned(16), _unsigned(16), OPTIONS),
    p.FrameType.WELCOME: st.builds(
        p.Welcome, TEXT, _unsigned(16), _fixed(p.PROOF_SIZE), _unsigned(16), OPTIONS
    ),
    p.FrameType.ERROR: st.builds(p.Error, st.sampled_from(p.ErrorCode), TEXT),
    p.FrameType.BYE: st.just(p.Bye()),
    p.FrameType.CHALLENGE: st.builds(p.Challenge, _unsigned(16), _fixed(p.NONCE_SIZE)),
    p.FrameType.AUTHENTICATE: st.builds(p.Authenticate, _fixed(p.NONCE_SIZE), _fixed(p.PROOF_SIZE)),
    p.FrameType.OFFER: st.builds(
        p.Offer,
        _unsigned(32),
        TEXT,
        _unsigned(64),
        st.integers(-(2**63), 2**63 - 1),
        _fixed(p.DIGEST_SIZE),
    ),
    p.FrameType.READY: st.builds(p.Ready, _unsigned(32), _unsigned(64)),
    p.FrameType.DATA: st.builds(p.DataHeader, _unsigned(32), _unsigned(64), _unsigned(64)),
    p.FrameType.DIGEST: st.builds(p.Digest, _unsigned(32), _fixed(p.DIGEST_SIZE)),
    p.FrameType.CANCEL: st.builds(p.Cancel, _unsigned(32)),
    p.FrameType.ASK_DIGEST: st.builds(p.AskDigest, _unsigned(32)),
    p.FrameType.ACK: st.builds(p.Ack, _unsigned(32), st.sampled_from(p.Outcome), TEXT),
    p.FrameType.NACK: st.builds(
        p.Nack, _unsigned(32), st.sampled_from(p.NackReason), st.booleans(), TEXT
    ),
}


@st.composite
def frame_heads(draw: st.DrawFn) -> bytes:
    """A known type and a length near the legal range, then some or all of a body.

    Random bytes almost never look like a frame that is due more bytes; these do, so the
    buffering of unfinished frames (up to a full MAX_BODY) gets exercised too.
    """
    kind = draw(st.sampled_from(p.FrameType))
    length = draw(st.one_of(st.integers(0, 64), st.integers(p.MAX_BODY - 2, p.MAX_BODY + 2)))
    body = draw(st.binary(max_size=32))
    filled = draw(st.sampled_from([0, max(length - 1, 0), length]))
    return FRAME_HEAD.pack(kind, length) + body + bytes(max(filled - len(body), 0))


BYTE_SOUP = st.lists(
    st.one_of(
        st.binary(max_size=64),
        frame_heads(),
        st.one_of(*EVENTS.values()).map(p.encode),
    ),
    max_size=8,
).map(b"".join)
CUTS = st.lists(st.integers(0, p.MAX_BODY + 200), max_size=8)


def test_every_frame_type_has_a_generator() -> None:
    assert set(EVENTS) == set(p.FrameType)


@settings(max_examples=500, deadline=None)
@given(event=st.one_of(*EVENTS.values()))
def test_every_event_round_trips(event: p.Event) -> None:
    frame = p.encode(event)
    kind, length = FRAME_HEAD.unpack(frame[: FRAME_HEAD.size])
    assert length == len(frame) - FRAME_HEAD.size <= p.MAX_BODY
    assert p.decode_body(p.FrameType(kind), frame[FRAME_HEAD.size :]) == event


def assert_events_or_the_remote_error(peer: Peer, data: bytes, cuts: list[int]) -> None:
    """The one outcome allowed for any input: events ending in a clean close, or the remote
    error (with a code an ERROR frame can carry).  Peer.feed checks the buffer bound."""
    try:
        events = play(peer, data, cuts)
    except p.RemoteProtocolError as error:
        assert isinstance(error.code, p.ErrorCode)
    else:
        assert isinstance(events[-1], p.ConnectionClosed)


# A frame one byte over the limit with all but one byte of its body: if the limit were not
# checked at the head, this would sit in the buffer.
ONE_OVER = FRAME_HEAD.pack(p.FrameType.HELLO, p.MAX_BODY + 1) + bytes(p.MAX_BODY)


@settings(max_examples=400, deadline=None)
@given(role=ROLES, data=BYTE_SOUP, cuts=CUTS)
@example(role=p.Role.RECEIVER, data=ONE_OVER, cuts=[])
@example(role=p.Role.SENDER, data=ONE_OVER, cuts=[3, 9000])
def test_any_bytes_in_any_pieces_give_events_or_the_remote_error(
    role: p.Role, data: bytes, cuts: list[int]
) -> None:
    assert_events_or_the_remote_error(Peer(role, PAYLOADS), data, cuts)


@settings(max_examples=300, deadline=None)
@given(role=ROLES, data=BYTE_SOUP, cuts=CUTS)
def test_after_the_handshake_any_bytes_give_events_or_the_remote_error(
    role: p.Role, data: bytes, cuts: list[int]
) -> None:
    peer = Peer(role, PAYLOADS)
    peer.feed(opening(role))
    assert peer.conn.state is p.ConnState.OPEN
    assert_events_or_the_remote_error(peer, data, cuts)


EXCHANGES = st.tuples(st.lists(st.binary(max_size=120), max_size=7), st.integers(1, 4))


@settings(max_examples=100, deadline=None)
@given(exchange=EXCHANGES, role=ROLES, cuts=CUTS)
def test_a_recorded_connection_replays_identically_in_any_pieces(
    exchange: tuple[list[bytes], int], role: p.Role, cuts: list[int]
) -> None:
    """The mutation test below starts from streams that are valid all the way through."""
    payloads, window = exchange
    wires = record_exchange(payloads, window)
    peer = Peer(role, payloads, window)
    events = play(peer, wires[role], cuts)
    other = p.Role.SENDER if role is p.Role.RECEIVER else p.Role.RECEIVER
    assert peer.take_output() == wires[other]
    assert isinstance(events[-1], p.ConnectionClosed)
    assert peer.conn.state is p.ConnState.CLOSED and not peer.conn.files


@settings(max_examples=100, deadline=None)
@given(exchange=EXCHANGES)
def test_every_offered_file_ends_once_answered_or_cancelled(
    exchange: tuple[list[bytes], int],
) -> None:
    """A cancelled file gets no answer, and every other file gets exactly one."""
    payloads, window = exchange
    wires = record_exchange(payloads, window)
    said = {
        role: play(Peer(role, payloads, window), wires[role])
        for role in (p.Role.SENDER, p.Role.RECEIVER)
    }
    offered = [e.file_id for e in said[p.Role.RECEIVER] if isinstance(e, p.Offer)]
    cancelled = [e.file_id for e in said[p.Role.RECEIVER] if isinstance(e, p.Cancel)]
    answered = [e.file_id for e in said[p.Role.SENDER] if isinstance(e, p.Ack | p.Nack)]
    assert sorted(cancelled + answered) == sorted(offered) == list(range(len(payloads)))
    # The peers withdraw file 4 at READY, file 5 after its payload, and file 2 (whose digest is
    # asked for) instead of its digest when it has an odd size (see tests/fuzz/peers.py).
    withdrawn = {4, 5} | ({2} if len(payloads) > 2 and len(payloads[2]) % 2 else set())
    assert set(cancelled) == withdrawn & set(offered)
    asked = [e.file_id for e in said[p.Role.SENDER] if isinstance(e, p.AskDigest)]
    assert asked == ([2] if len(payloads) > 2 else [])


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "truncate"]),
        st.integers(0, 10**6),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=4,
)


def mutate(wire: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    """`wire` with bits flipped, bytes inserted or deleted, or the tail cut off."""
    out = bytearray(wire)
    for kind, where, junk in mutations:
        at = where % (len(out) + 1)
        if kind == "flip" and out:
            out[at % len(out)] ^= junk[0] or 0x80
        elif kind == "insert":
            out[at:at] = junk
        elif kind == "delete":
            del out[at : at + len(junk)]
        elif kind == "truncate":
            del out[at:]
    return bytes(out)


@settings(max_examples=400, deadline=None)
@given(exchange=EXCHANGES, role=ROLES, mutations=MUTATIONS, cuts=CUTS)
def test_damaged_connections_give_events_or_the_remote_error(
    exchange: tuple[list[bytes], int],
    role: p.Role,
    mutations: list[tuple[str, int, bytes]],
    cuts: list[int],
) -> None:
    payloads, window = exchange
    damaged = mutate(record_exchange(payloads, window)[role], mutations)
    assert_events_or_the_remote_error(Peer(role, payloads, window), damaged, cuts)


@settings(max_examples=300, deadline=None)
@given(
    role=ROLES,
    opened=st.booleans(),
    kind=_unsigned(8),
    length=st.integers(p.MAX_BODY + 1, 2**32 - 1),
)
def test_an_oversized_length_is_refused_at_the_fifth_byte_without_allocating(
    role: p.Role, opened: bool, kind: int, length: int
) -> None:
    peer = Peer(role, PAYLOADS)
    if opened:
        peer.feed(opening(role))
    head = FRAME_HEAD.pack(kind, length)
    known = kind in set(p.FrameType)
    tracemalloc.start()
    try:
        for byte in pieces(head[:-1], range(1, FRAME_HEAD.size)):
            assert peer.feed(byte) == []
        with pytest.raises(p.RemoteProtocolError, match="exceeds" if known else "frame type"):
            peer.feed(head[-1:])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < p.MAX_BODY
