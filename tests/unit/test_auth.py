"""The handshake's proofs (protocol.auth) and the order the state machine enforces."""

from __future__ import annotations

import pytest

from scanxfer import protocol as p
from scanxfer.protocol import auth

SECRET = auth.decode_secret(auth.new_secret())
CHANNEL = bytes(32)


def signed(receiver_nonce: bytes, sender_nonce: bytes, name: str = "lab-pc") -> bytes:
    return auth.transcript(1, name, receiver_nonce, sender_nonce, CHANNEL)


def test_the_right_secret_passes_and_the_receiver_proves_it_too() -> None:
    record = auth.verifier(SECRET)
    transcript = signed(auth.new_nonce(), auth.new_nonce())
    assert auth.check_client_proof(record, transcript, auth.client_proof(SECRET, transcript))
    assert auth.check_server_proof(SECRET, transcript, auth.server_proof(record, transcript))


def test_the_receiver_record_holds_neither_the_secret_nor_a_usable_proof() -> None:
    record = auth.verifier(SECRET)
    assert SECRET not in (record.stored_key, record.server_key)
    transcript = signed(auth.new_nonce(), auth.new_nonce())
    # Someone holding the record but not the secret: their best guess at a proof fails.
    forged = auth.server_proof(record, transcript)
    assert not auth.check_client_proof(record, transcript, forged)


def test_a_wrong_secret_fails_both_ways() -> None:
    other = auth.decode_secret(auth.new_secret())
    record = auth.verifier(SECRET)
    transcript = signed(auth.new_nonce(), auth.new_nonce())
    assert not auth.check_client_proof(record, transcript, auth.client_proof(other, transcript))
    assert not auth.check_server_proof(other, transcript, auth.server_proof(record, transcript))


def test_a_proof_is_bound_to_its_nonces_name_and_channel() -> None:
    record = auth.verifier(SECRET)
    receiver_nonce, sender_nonce = auth.new_nonce(), auth.new_nonce()
    proof = auth.client_proof(SECRET, signed(receiver_nonce, sender_nonce))
    # Replayed against a fresh challenge, or for another name or certificate: refused.
    assert not auth.check_client_proof(record, signed(auth.new_nonce(), sender_nonce), proof)
    assert not auth.check_client_proof(record, signed(receiver_nonce, sender_nonce, "x"), proof)
    other_channel = auth.transcript(1, "lab-pc", receiver_nonce, sender_nonce, b"\1" * 32)
    assert not auth.check_client_proof(record, other_channel, proof)
    assert not auth.check_client_proof(record, signed(receiver_nonce, sender_nonce), proof[:-1])


@pytest.mark.parametrize("text", ["", "x" * 43 + "=", "!" * 43, "A" * 44, "A" * 42 + "B"])
def test_malformed_secrets_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="key"):
        auth.decode_secret(text)


def test_a_secret_round_trips_as_text() -> None:
    text = auth.new_secret()
    assert len(text) == auth.SECRET_TEXT_LENGTH
    assert auth.encode_secret(auth.decode_secret(text)) == text


def test_offers_before_the_welcome_are_refused() -> None:
    sender, receiver = p.Connection(p.Role.SENDER), p.Connection(p.Role.RECEIVER)
    receiver.receive_data(sender.send(p.Hello("h")))
    receiver.next_event()
    receiver.receive_data(p.encode(p.Offer(1, "f.npy", 1, 0, bytes(16))))
    with pytest.raises(p.RemoteProtocolError, match="handshake"):
        receiver.next_event()


@pytest.mark.parametrize(
    ("role", "frames"),
    [
        (p.Role.RECEIVER, [p.Authenticate(bytes(32), bytes(32))]),
        (p.Role.RECEIVER, [p.Hello("h"), p.Hello("h")]),
        (p.Role.SENDER, [p.Welcome("pi", 4, bytes(32))]),
        (p.Role.SENDER, [p.Challenge(1, bytes(32)), p.Welcome("pi", 4, bytes(32))]),
    ],
)
def test_handshake_frames_out_of_order_are_refused(role: p.Role, frames: list[p.Event]) -> None:
    conn = p.Connection(role)
    if role is p.Role.SENDER:
        conn.send(p.Hello("h"))
    for frame in frames[:-1]:
        conn.receive_data(p.encode(frame))
        conn.next_event()
    conn.receive_data(p.encode(frames[-1]))
    with pytest.raises(p.RemoteProtocolError, match="out of order"):
        conn.next_event()


def test_short_nonces_cannot_be_sent() -> None:
    sender = p.Connection(p.Role.SENDER)
    sender.send(p.Hello("h"))
    sender.receive_data(p.encode(p.Challenge(1, bytes(32))))
    sender.next_event()
    with pytest.raises(p.LocalProtocolError, match="32 bytes"):
        sender.send(p.Authenticate(b"short", bytes(32)))
