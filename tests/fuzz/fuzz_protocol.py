"""Fuzz target: any bytes into either end of a connection, and into every frame decoder.

The first byte of an input picks what it is fed to:

    0, 1     a receiver or a sender Peer (tests/fuzz/peers.py).  The next byte holds a count
             (mod 4) of big-endian u16 cut positions that follow; the rest is the stream, fed
             in those pieces, then EOF.
    2 + k    decode_body(FrameType number k, in declaration order) with the rest as the body;
             a body that decodes must encode and decode again to the same event.

(taken modulo 2 + the number of frame types).  The only exception allowed out is
RemoteProtocolError: anything else, a LocalProtocolError from a peer's legal answer, or a
failed check of the buffer bound is a crash.

    python -m tests.fuzz.fuzz_protocol build/fuzz/protocol -max_total_time=60
"""

from __future__ import annotations

import struct

from .launch import atheris, run

with atheris.instrument_imports(include=["scanxfer"]):
    from scanxfer import protocol as p
    from scanxfer.protocol.frames import FRAME_HEAD

    from .peers import DIGEST, Peer, play, record_exchange

ROLES = (p.Role.RECEIVER, p.Role.SENDER)
KINDS = tuple(p.FrameType)
PAYLOADS = (b"a" * 40, b"", b"d" * 9, b"n", b"m" * 25, b"z" * 70)
WINDOW = 4
MAX_LEN = 8192
_CUT = struct.Struct(">H")
_MAX_CUTS = 4
EXTENSIONS = {p.CANCEL_OPTION: p.CANCEL_ON, p.ASK_DIGEST_OPTION: p.ASK_DIGEST_ON}
SAMPLES: dict[p.FrameType, p.Event] = {
    p.FrameType.HELLO: p.Hello("lab-pc", 1, 2, {p.INSTANCE_OPTION: b"12345678", **EXTENSIONS}),
    p.FrameType.WELCOME: p.Welcome("pi", 64, bytes(p.PROOF_SIZE), options=EXTENSIONS),
    p.FrameType.ERROR: p.Error(p.ErrorCode.AUTH_FAILED, "authentication failed"),
    p.FrameType.BYE: p.Bye(),
    p.FrameType.CHALLENGE: p.Challenge(1, bytes(p.NONCE_SIZE)),
    p.FrameType.AUTHENTICATE: p.Authenticate(bytes(p.NONCE_SIZE), bytes(p.PROOF_SIZE)),
    p.FrameType.OFFER: p.Offer(7, "run1/scan_0001.npy", 4096, -1, DIGEST),
    p.FrameType.READY: p.Ready(7, 1024),
    p.FrameType.DATA: p.DataHeader(7, 1024, 3072),
    p.FrameType.DIGEST: p.Digest(7, bytes(range(16))),
    p.FrameType.CANCEL: p.Cancel(7),
    p.FrameType.ASK_DIGEST: p.AskDigest(7),
    p.FrameType.ACK: p.Ack(7, p.Outcome.KEPT_BESIDE, "run1/scan_0001~1.npy"),
    p.FrameType.NACK: p.Nack(7, p.NackReason.BAD_NAME, False, "bad name"),
}


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % (len(ROLES) + len(KINDS)), data[1:]
    try:
        if mode < len(ROLES):
            cuts, stream = _split(rest)
            play(Peer(ROLES[mode], PAYLOADS, WINDOW), stream, cuts)
        else:
            _decode(KINDS[mode - len(ROLES)], rest)
    except p.RemoteProtocolError:
        pass


def _split(data: bytes) -> tuple[list[int], bytes]:
    """The cut positions at the front of `data`, and the stream after them."""
    end = 1 + data[0] % _MAX_CUTS * _CUT.size if data else 1
    if len(data) < end:
        return [], b""
    return [cut for (cut,) in _CUT.iter_unpack(data[1:end])], data[end:]


def _decode(kind: p.FrameType, body: bytes) -> None:
    event = p.decode_body(kind, body)
    if len(body) <= p.MAX_BODY:
        frame = p.encode(event)
        assert frame[0] == kind, (kind, frame[0])
        assert p.decode_body(kind, frame[FRAME_HEAD.size :]) == event, event


def seeds() -> list[bytes]:
    """Whole recorded connections for both roles, and one valid body per frame type."""
    wires = record_exchange(PAYLOADS, WINDOW)
    found = [bytes([mode, 0]) + wires[role] for mode, role in enumerate(ROLES)]
    found += [bytes([mode, 2, 0, 7, 1, 44]) + wires[role] for mode, role in enumerate(ROLES)]
    assert set(SAMPLES) == set(KINDS)
    for index, kind in enumerate(KINDS):
        found.append(bytes([len(ROLES) + index]) + p.encode(SAMPLES[kind])[FRAME_HEAD.size :])
    return found


if __name__ == "__main__":
    run(test_one_input, seeds(), MAX_LEN)
