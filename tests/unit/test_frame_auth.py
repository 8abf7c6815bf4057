"""Frame authentication on plain TCP (docs/protocol.md 2.1): two Connections in memory.

Each test opens a pair that negotiated `frame_auth`, lets one end send, changes the bytes
on the way as an attacker on the path would, and checks that the other end refuses them
before it acts on them.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from scanxfer import protocol as p
from scanxfer.protocol import auth
from scanxfer.protocol.integrity import SEGMENT

SERVER_KEY = bytes(range(32))
DIGEST = bytes(range(16))
AUTH = {p.FRAME_AUTH_OPTION: p.FRAME_AUTH_ON}


def handshake(
    sender_key: bytes = SERVER_KEY,
    receiver_key: bytes = SERVER_KEY,
    options: dict[str, bytes] = AUTH,
    echo: bool = True,
    welcome_window: int = 8,
) -> tuple[p.Connection, p.Connection]:
    """A sender and a receiver through HELLO .. WELCOME, each given its frame key."""
    sender, receiver = p.Connection(p.Role.SENDER), p.Connection(p.Role.RECEIVER, 8)
    sender.use_frame_key(sender_key)
    receiver.receive_data(sender.send(p.Hello("host", options=options)))
    hello = receiver.next_event()
    assert isinstance(hello, p.Hello)
    sender.receive_data(receiver.send(p.Challenge(p.PROTOCOL_VERSION, b"r" * p.NONCE_SIZE)))
    assert isinstance(sender.next_event(), p.Challenge)
    receiver.receive_data(sender.send(p.Authenticate(b"s" * p.NONCE_SIZE, b"p" * p.PROOF_SIZE)))
    assert isinstance(receiver.next_event(), p.Authenticate)
    receiver.use_frame_key(receiver_key)
    echoed = p.welcome_options(hello, authenticate_frames=echo)
    wire = receiver.send(p.Welcome("pi", 8, b"w" * p.PROOF_SIZE, options=echoed))
    if welcome_window != 8:  # an attacker rewrites the window on the way
        wire = wire[:7] + welcome_window.to_bytes(2, "big") + wire[9:]
    sender.receive_data(wire)
    assert isinstance(sender.next_event(), p.Welcome)
    return sender, receiver


def events(conn: p.Connection, wire: bytes) -> list[p.Event]:
    conn.receive_data(wire)
    out = []
    while (event := conn.next_event()) is not p.NEED_DATA:
        out.append(event)
    return out


def offer(file_id: int = 1, path: str = "run1/scan.npy") -> p.Offer:
    return p.Offer(file_id, path, 4, 0, DIGEST)


def test_both_ends_authenticate_when_both_ask_and_only_then() -> None:
    sender, receiver = handshake()
    assert sender.authenticates_frames and receiver.authenticates_frames
    sender, receiver = handshake(echo=False)  # a receiver with TLS, or one that predates it
    assert not sender.authenticates_frames and not receiver.authenticates_frames
    sender, receiver = handshake(options={})
    assert not sender.authenticates_frames and not receiver.authenticates_frames


def test_every_frame_carries_a_tag_and_the_frames_still_arrive() -> None:
    sender, receiver = handshake()
    wire = sender.send(offer())
    assert len(wire) == len(p.encode(offer())) + p.TAG_SIZE
    assert events(receiver, wire) == [offer()]
    answer = receiver.send(p.Ready(1, 0))
    assert events(sender, answer) == [p.Ready(1, 0)]


def test_a_flipped_bit_anywhere_in_a_frame_or_its_tag_is_refused() -> None:
    sender, _ = handshake()
    wire = sender.send(offer())
    for bit in range(8 * len(wire)):
        if bit // 8 < 5:
            continue  # the header: a changed type or length is refused by the framing too
        _, receiver = handshake()
        tampered = bytearray(wire)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(p.FrameAuthError, match="frame authentication failed"):
            events(receiver, bytes(tampered))


def test_an_injected_frame_is_refused_even_if_well_formed() -> None:
    _, receiver = handshake()
    forged = p.encode(offer(path="evil.npy")) + bytes(p.TAG_SIZE)
    with pytest.raises(p.FrameAuthError):
        events(receiver, forged)
    assert receiver.files == {}


def test_a_replayed_frame_is_refused() -> None:
    sender, receiver = handshake()
    first = sender.send(offer(1))
    assert events(receiver, first) == [offer(1)]
    events(sender, receiver.send(p.Nack(1, p.NackReason.BUSY, True, "busy")))
    with pytest.raises(p.FrameAuthError):
        events(receiver, first)  # the same OFFER again: its sequence number has passed


def test_reordered_or_dropped_frames_are_refused() -> None:
    sender, receiver = handshake()
    one, two = sender.send(offer(1)), sender.send(offer(2, "b.npy"))
    with pytest.raises(p.FrameAuthError):
        events(receiver, two + one)
    _, receiver = handshake()
    with pytest.raises(p.FrameAuthError):
        events(receiver, two)  # the first one left out


def test_a_frame_reflected_back_to_its_sender_is_refused() -> None:
    """Each direction has its own key: the receiver's ERROR number 0 is no sender's frame 0."""
    _, receiver = handshake()
    reflected = receiver.send(p.Error(p.ErrorCode.SHUTTING_DOWN, "bye"))
    with pytest.raises(p.FrameAuthError):
        events(receiver, reflected)  # an ERROR may come from either end: only the key tells


def test_another_key_fails_at_the_first_frame() -> None:
    sender, receiver = handshake(receiver_key=bytes(32))
    with pytest.raises(p.FrameAuthError):
        events(receiver, sender.send(offer()))


def test_a_handshake_altered_on_the_way_fails_at_the_first_frame() -> None:
    """The keys are salted with the handshake's bytes: options and window are covered too."""
    sender, receiver = handshake(welcome_window=4)
    with pytest.raises(p.FrameAuthError):
        events(receiver, sender.send(offer()))


def ready_for(size: int) -> tuple[p.Connection, p.Connection]:
    """A pair whose file 1, of `size` bytes, is READY from 0."""
    sender, receiver = handshake()
    events(receiver, sender.send(p.Offer(1, "scan.npy", size, 0, DIGEST)))
    events(sender, receiver.send(p.Ready(1, 0)))
    return sender, receiver


def payload_bytes(got: list[p.Event]) -> bytes:
    return b"".join(bytes(event.data) for event in got if isinstance(event, p.DataChunk))


def test_a_payload_carries_a_tag_after_each_segment() -> None:
    size = 2 * SEGMENT + 5
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    sender, receiver = ready_for(size)
    wire = sender.send(p.DataHeader(1, 0, size))
    # Given in pieces that do not line up with the segments, as a sender reads them.
    for start in range(0, size, 50_000):
        wire += sender.send_payload(payload[start : start + 50_000])
    assert len(wire) == len(p.encode(p.DataHeader(1, 0, size))) + size + 4 * p.TAG_SIZE
    got = events(receiver, wire)
    assert payload_bytes(got) == payload
    assert isinstance(got[0], p.DataHeader) and got[-1] == p.DataEnd(1)


def test_a_changed_payload_byte_is_refused_before_its_segment_is_handed_on() -> None:
    size = 2 * SEGMENT
    sender, receiver = ready_for(size)
    wire = bytearray(sender.send(p.DataHeader(1, 0, size)) + sender.send_payload(bytes(size)))
    header = len(wire) - size - 2 * p.TAG_SIZE
    wire[header + SEGMENT + p.TAG_SIZE + 7] ^= 1  # in the second segment
    got: list[p.Event] = []
    receiver.receive_data(bytes(wire))
    with pytest.raises(p.FrameAuthError, match=f"segment at payload byte {SEGMENT}"):
        while (event := receiver.next_event()) is not p.NEED_DATA:
            got.append(event)
    # The first segment checked out and was handed on; not a byte of the second.
    assert payload_bytes(got) == bytes(SEGMENT)


def test_no_payload_byte_is_handed_on_before_its_segment_tag_arrives() -> None:
    sender, receiver = ready_for(4)
    wire = sender.send(p.DataHeader(1, 0, 4)) + sender.send_payload(b"abcd")
    got = events(receiver, wire[:-1])
    assert [type(event) for event in got] == [p.DataHeader]
    receiver.receive_data(b"")
    with pytest.raises(p.RemoteProtocolError, match="4 payload bytes due"):
        receiver.next_event()


def test_an_empty_payload_gets_its_tag_with_its_header() -> None:
    sender, receiver = ready_for(0)
    wire = sender.send(p.DataHeader(1, 0, 0))
    assert len(wire) == len(p.encode(p.DataHeader(1, 0, 0))) + 2 * p.TAG_SIZE
    assert [type(e) for e in events(receiver, wire)] == [p.DataHeader, p.DataEnd]


def test_a_truncated_frame_is_waited_for_then_refused_at_the_end_of_the_stream() -> None:
    sender, receiver = handshake()
    wire = sender.send(offer())
    assert events(receiver, wire[:-1]) == []  # the tag is not all here: nothing acted on
    receiver.receive_data(b"")
    with pytest.raises(p.RemoteProtocolError, match="middle of a frame"):
        receiver.next_event()


def test_the_sender_cannot_send_a_frame_inside_its_own_payload() -> None:
    sender, receiver = handshake()
    events(receiver, sender.send(offer()))
    events(sender, receiver.send(p.Ready(1, 0)))
    sender.send(p.DataHeader(1, 0, 4))
    with pytest.raises(p.LocalProtocolError, match="payload bytes due"):
        sender.send(offer(2, "b.npy"))
    with pytest.raises(p.LocalProtocolError, match="due"):
        sender.send_payload(b"too long")


def test_the_frame_keys_follow_hkdf_sha256() -> None:
    """RFC 5869 with SHA-256: salt = handshake hash, IKM = server_key, one block per key."""
    handshake_hash = hashlib.sha256(b"frames").digest()
    prk = hmac.digest(handshake_hash, SERVER_KEY, "sha256")
    keys = auth.frame_keys(SERVER_KEY, handshake_hash)
    label = b"scanxfer frame keys v1 "
    assert keys.sender_to_receiver == hmac.digest(prk, label + b"sender to receiver\x01", "sha256")
    assert keys.receiver_to_sender == hmac.digest(prk, label + b"receiver to sender\x01", "sha256")
