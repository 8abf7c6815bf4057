"""Protocol v1 frames: the byte layout of each event.

The layouts are specified in docs/protocol.md; `encode` and `decode_body` are their
only implementation.  Nothing here keeps state: that is `connection.Connection`.
"""

from __future__ import annotations

import enum
import struct
from typing import TypeVar

from .events import (
    Ack,
    AskDigest,
    Authenticate,
    Bye,
    Cancel,
    Challenge,
    DataHeader,
    Digest,
    Error,
    ErrorCode,
    Event,
    Hello,
    LocalProtocolError,
    Nack,
    NackReason,
    Offer,
    Outcome,
    Ready,
    RemoteProtocolError,
    Welcome,
)

MAGIC = b"SCANXFER"
MAX_BODY = 65536  # largest control-frame body; DATA payload is streamed, not framed

FRAME_HEAD = struct.Struct(">BI")  # type, body length
_DATA_HEAD = struct.Struct(">IQQ")  # file_id, offset, length
_OFFER_HEAD = struct.Struct(">IQq16s")  # file_id, size, mtime_ns, digest
_READY = struct.Struct(">IQ")
_ACK_HEAD = struct.Struct(">IB")
_NACK_HEAD = struct.Struct(">IHB")
_DIGEST = struct.Struct(">I16s")  # file_id, digest
_FILE_ID = struct.Struct(">I")  # CANCEL, ASK_DIGEST: the file_id alone
_HELLO_HEAD = struct.Struct(">8sHH")
_WELCOME_HEAD = struct.Struct(">HH32s")  # version, window, receiver's proof
_CHALLENGE = struct.Struct(">H32s")  # chosen version, receiver nonce
_AUTHENTICATE = struct.Struct(">32s32s")  # sender nonce, sender's proof
_U16 = struct.Struct(">H")


class FrameType(enum.IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    ERROR = 0x03
    BYE = 0x04
    CHALLENGE = 0x05
    AUTHENTICATE = 0x06
    # 0x07-0x0F are reserved for later handshake extensions.
    OFFER = 0x10
    READY = 0x11
    DATA = 0x12
    ACK = 0x13
    NACK = 0x14
    DIGEST = 0x15
    CANCEL = 0x16
    ASK_DIGEST = 0x17


# The frame that carries each event; DataChunk, DataEnd and ConnectionClosed are not frames.
FRAME_TYPES: dict[type[Event], FrameType] = {
    Hello: FrameType.HELLO,
    Welcome: FrameType.WELCOME,
    Error: FrameType.ERROR,
    Bye: FrameType.BYE,
    Challenge: FrameType.CHALLENGE,
    Authenticate: FrameType.AUTHENTICATE,
    Offer: FrameType.OFFER,
    Ready: FrameType.READY,
    DataHeader: FrameType.DATA,
    Ack: FrameType.ACK,
    Nack: FrameType.NACK,
    Digest: FrameType.DIGEST,
    Cancel: FrameType.CANCEL,
    AskDigest: FrameType.ASK_DIGEST,
}


# --- field codecs -------------------------------------------------------------


def _pack_str(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) > 0xFFFF:
        raise LocalProtocolError(f"string of {len(raw)} bytes does not fit a frame")
    return _U16.pack(len(raw)) + raw


def _pack_options(options: dict[str, bytes]) -> bytes:
    parts = [_U16.pack(len(options))]
    for key, value in options.items():
        if len(value) > 0xFFFF:
            raise LocalProtocolError(f"option {key!r} is too long")
        parts += [_pack_str(key), _U16.pack(len(value)), value]
    return b"".join(parts)


class _Reader:
    """Cursor over one frame body; every read is bounds-checked against the body."""

    def __init__(self, body: bytes, frame: FrameType) -> None:
        self._body = body
        self._pos = 0
        self._frame = frame

    def fixed(self, layout: struct.Struct) -> tuple:
        end = self._pos + layout.size
        if end > len(self._body):
            raise RemoteProtocolError(f"{self._frame.name} frame is too short")
        values = layout.unpack_from(self._body, self._pos)
        self._pos = end
        return values

    def raw(self) -> bytes:
        (length,) = self.fixed(_U16)
        end = self._pos + length
        if end > len(self._body):
            raise RemoteProtocolError(f"{self._frame.name} frame: field runs past the frame")
        value = self._body[self._pos : end]
        self._pos = end
        return value

    def text(self) -> str:
        # surrogateescape keeps undecodable bytes visible to the name check,
        # which refuses them per file instead of killing the connection.
        return self.raw().decode("utf-8", "surrogateescape")

    def options(self) -> dict[str, bytes]:
        (count,) = self.fixed(_U16)
        return {self.text(): self.raw() for _ in range(count)}

    def done(self) -> None:
        if self._pos != len(self._body):
            raise RemoteProtocolError(f"{self._frame.name} frame has trailing bytes")


_Enum = TypeVar("_Enum", bound=enum.IntEnum)


def parse_enum(kind: type[_Enum], value: int, what: str) -> _Enum:
    try:
        return kind(value)
    except ValueError:
        raise RemoteProtocolError(f"unknown {what} {value}") from None


def encode(event: Event) -> bytes:
    """Frame one event.  A DataHeader is followed on the wire by its raw payload."""
    match event:
        case Hello():
            body = _HELLO_HEAD.pack(MAGIC, event.min_version, event.max_version)
            body += _pack_str(event.name) + _pack_options(event.options)
            kind = FrameType.HELLO
        case Challenge():
            body, kind = _CHALLENGE.pack(event.version, event.nonce), FrameType.CHALLENGE
        case Authenticate():
            body = _AUTHENTICATE.pack(event.nonce, event.proof)
            kind = FrameType.AUTHENTICATE
        case Welcome():
            body = _WELCOME_HEAD.pack(event.version, event.window, event.proof)
            body += _pack_str(event.name) + _pack_options(event.options)
            kind = FrameType.WELCOME
        case Error():
            body, kind = _U16.pack(event.code) + _pack_str(event.message), FrameType.ERROR
        case Bye():
            body, kind = b"", FrameType.BYE
        case Offer():
            head = _OFFER_HEAD.pack(event.file_id, event.size, event.mtime_ns, event.digest)
            body, kind = head + _pack_str(event.path), FrameType.OFFER
        case Ready():
            body, kind = _READY.pack(event.file_id, event.offset), FrameType.READY
        case DataHeader():
            body = _DATA_HEAD.pack(event.file_id, event.offset, event.length)
            kind = FrameType.DATA
        case Digest():
            body, kind = _DIGEST.pack(event.file_id, event.digest), FrameType.DIGEST
        case Cancel():
            body, kind = _FILE_ID.pack(event.file_id), FrameType.CANCEL
        case AskDigest():
            body, kind = _FILE_ID.pack(event.file_id), FrameType.ASK_DIGEST
        case Ack():
            head = _ACK_HEAD.pack(event.file_id, event.outcome)
            body, kind = head + _pack_str(event.stored_path), FrameType.ACK
        case Nack():
            head = _NACK_HEAD.pack(event.file_id, event.reason, event.retryable)
            body, kind = head + _pack_str(event.message), FrameType.NACK
        case _:
            raise LocalProtocolError(f"{type(event).__name__} is not a frame")
    if len(body) > MAX_BODY:
        raise LocalProtocolError(f"{kind.name} frame body of {len(body)} bytes is too large")
    return FRAME_HEAD.pack(kind, len(body)) + body


def decode_body(kind: FrameType, body: bytes) -> Event:
    """Parse one control-frame body (everything except the DATA payload)."""
    reader = _Reader(body, kind)
    event: Event
    match kind:
        case FrameType.HELLO:
            magic, low, high = reader.fixed(_HELLO_HEAD)
            if magic != MAGIC:
                raise RemoteProtocolError("not a scanxfer peer (bad magic in hello)")
            event = Hello(reader.text(), low, high, reader.options())
        case FrameType.CHALLENGE:
            event = Challenge(*reader.fixed(_CHALLENGE))
        case FrameType.AUTHENTICATE:
            event = Authenticate(*reader.fixed(_AUTHENTICATE))
        case FrameType.WELCOME:
            version, window, proof = reader.fixed(_WELCOME_HEAD)
            event = Welcome(reader.text(), window, proof, version, reader.options())
        case FrameType.ERROR:
            (code,) = reader.fixed(_U16)
            event = Error(parse_enum(ErrorCode, code, "error code"), reader.text())
        case FrameType.BYE:
            event = Bye()
        case FrameType.OFFER:
            file_id, size, mtime_ns, digest = reader.fixed(_OFFER_HEAD)
            event = Offer(file_id, reader.text(), size, mtime_ns, digest)
        case FrameType.READY:
            event = Ready(*reader.fixed(_READY))
        case FrameType.DATA:
            event = DataHeader(*reader.fixed(_DATA_HEAD))
        case FrameType.DIGEST:
            event = Digest(*reader.fixed(_DIGEST))
        case FrameType.CANCEL:
            event = Cancel(*reader.fixed(_FILE_ID))
        case FrameType.ASK_DIGEST:
            event = AskDigest(*reader.fixed(_FILE_ID))
        case FrameType.ACK:
            file_id, outcome = reader.fixed(_ACK_HEAD)
            event = Ack(file_id, parse_enum(Outcome, outcome, "outcome"), reader.text())
        case FrameType.NACK:
            file_id, reason, retryable = reader.fixed(_NACK_HEAD)
            reason = parse_enum(NackReason, reason, "nack reason")
            event = Nack(file_id, reason, bool(retryable), reader.text())
    reader.done()
    return event
