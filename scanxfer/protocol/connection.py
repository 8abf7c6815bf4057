"""Protocol v1 state machine: one end of a connection, sans-IO.

Feed it the bytes read from the peer and it returns events; give it events and it
returns the bytes to write.  Both ends keep the same table of files in flight, so
each refuses what the other may not do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .buffer import ReceiveBuffer
from .events import (
    CANCEL_ON,
    CANCEL_OPTION,
    DEFERRED_DIGEST,
    DIGEST_SIZE,
    MAX_SIZE,
    MAX_WINDOW,
    NEED_DATA,
    NONCE_SIZE,
    PROOF_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Authenticate,
    Bye,
    Cancel,
    Challenge,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataHeader,
    Digest,
    Error,
    ErrorCode,
    Event,
    Hello,
    LocalProtocolError,
    Nack,
    NeedData,
    Offer,
    Outcome,
    ProtocolError,
    Ready,
    RemoteProtocolError,
    Role,
    Welcome,
)
from .frames import FRAME_HEAD, MAX_BODY, FrameType, decode_body, encode, parse_enum


class FileState(enum.Enum):
    OFFERED = "offered"  # offer sent, no answer yet
    READY = "ready"  # receiver asked for bytes from an offset
    STREAMING = "streaming"  # payload under way (receiver side only)
    SENT = "sent"  # all payload bytes are on the wire / in; waiting for ACK or NACK


class ConnState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True)
class FileInFlight:
    offer: Offer
    state: FileState = FileState.OFFERED
    offset: int = 0
    digest_due: bool = False  # offered with DEFERRED_DIGEST, its DIGEST not yet sent


# Which frames each role may send; the peer may send only the other role's set.
_SENDS = {
    Role.SENDER: frozenset({Hello, Authenticate, Offer, DataHeader, Digest, Cancel, Bye, Error}),
    Role.RECEIVER: frozenset({Challenge, Welcome, Ready, Ack, Nack, Error}),
}
# The handshake, in order: each frame is legal only right after the one before it.
_HANDSHAKE = (Hello, Challenge, Authenticate, Welcome)


@dataclass(slots=True)
class _Payload:
    """The DATA payload being received: whose, and how many bytes are still to come."""

    file_id: int
    remaining: int


class Connection:
    """One end of a scanxfer connection: feed it bytes, get events; give it events, get bytes.

    Both ends track the same table of files in flight, so each side refuses what
    the other may not do (an ACK for a file never offered, DATA of the wrong
    length, more files in flight than the window) with a `ProtocolError`.
    """

    def __init__(self, role: Role, window: int = 64) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW}, got {window}")
        self.role = role
        self.window = window  # the receiver's limit; a sender learns it from Welcome
        self.state = ConnState.HANDSHAKE
        self.version: int | None = None
        self.files: dict[int, FileInFlight] = {}
        self._hello: Hello | None = None
        self._can_cancel = False
        self._handshake_done = 0  # how many frames of _HANDSHAKE have passed
        self._input = ReceiveBuffer()
        self._payload: _Payload | None = None  # inside a DATA payload
        self._eof = False

    @property
    def can_cancel(self) -> bool:
        """Whether the sender may send CANCEL: its HELLO asked, and the WELCOME echoed it."""
        return self._can_cancel

    # -- outgoing --------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Check that `event` is legal now, update the state, and return its bytes.

        After a DataHeader the caller must put exactly `length` payload bytes on
        the wire before anything else (e.g. with socket.sendfile).
        """
        if type(event) not in _SENDS[self.role]:
            raise LocalProtocolError(f"a {self.role.value} cannot send {type(event).__name__}")
        if isinstance(event, Error):
            self.state = ConnState.CLOSED
            return encode(event)
        if self.state is ConnState.CLOSED:
            raise LocalProtocolError("connection is closed")
        self._apply(event, _local)
        return encode(event)

    # -- incoming --------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the peer; b"" means the peer closed its end.

        The data is referenced, not copied, until `next_event` returns NEED_DATA,
        so a reused receive buffer may be refilled only after that.
        """
        if self._eof:
            raise LocalProtocolError("data received after end of stream")
        if not data:
            self._eof = True
            return
        self._input.append(data)

    def next_event(self) -> Event | NeedData:
        """The next event from the bytes received so far, or NEED_DATA."""
        if self._payload is not None:
            return self._next_payload_event()
        event = self._next_frame()
        if event is NEED_DATA:
            if self._eof:
                if self._input:
                    raise RemoteProtocolError("connection closed in the middle of a frame")
                return ConnectionClosed()
            self._input.own()
            return NEED_DATA
        if isinstance(event, Error):
            self.state = ConnState.CLOSED
            return event
        if type(event) not in _SENDS[_other(self.role)]:
            raise RemoteProtocolError(f"a {self.role.value} cannot receive {type(event).__name__}")
        if self.state is ConnState.CLOSED:
            raise RemoteProtocolError(f"{type(event).__name__} after the connection closed")
        self._apply(event, _remote)
        if isinstance(event, DataHeader):
            self._payload = _Payload(event.file_id, event.length)
        return event

    def _next_payload_event(self) -> DataChunk | DataEnd | NeedData:
        payload = self._payload
        assert payload is not None  # called only inside a payload
        if payload.remaining == 0:
            self._payload = None
            self.files[payload.file_id].state = FileState.SENT
            return DataEnd(payload.file_id)
        if not self._input:
            if self._eof:
                due = payload.remaining
                raise RemoteProtocolError(f"connection closed with {due} payload bytes due")
            return NEED_DATA
        chunk = self._input.take_view(payload.remaining)
        payload.remaining -= len(chunk)
        return DataChunk(payload.file_id, chunk)

    def _next_frame(self) -> Event | NeedData:
        if len(self._input) < FRAME_HEAD.size:
            return NEED_DATA
        kind_value, length = FRAME_HEAD.unpack(self._input.peek(FRAME_HEAD.size))
        kind = parse_enum(FrameType, kind_value, "frame type")
        # Checked before buffering the body: a peer never sizes our allocations.
        if length > MAX_BODY:
            raise RemoteProtocolError(f"{kind.name} frame of {length} bytes exceeds {MAX_BODY}")
        if len(self._input) < FRAME_HEAD.size + length:
            return NEED_DATA
        self._input.take(FRAME_HEAD.size)
        return decode_body(kind, self._input.take(length))

    # -- the rules, shared by both directions -----------------------------------

    def _apply(self, event: Event, fail: type[ProtocolError]) -> None:
        match event:
            case Hello() | Challenge() | Authenticate() | Welcome():
                self._on_handshake(event, fail)
            case Offer():
                self._on_offer(event, fail)
            case Ready():
                self._on_ready(event, fail)
            case DataHeader():
                self._on_data_header(event, fail)
            case Digest():
                self._on_digest(event, fail)
            case Cancel():
                self._on_cancel(event, fail)
            case Ack() | Nack():
                self._on_answer(event, fail)
            case Bye():
                self._require_open(event, fail)
                if self.files:
                    raise fail(f"BYE with {len(self.files)} files still in flight")
                self.state = ConnState.CLOSED

    def _on_handshake(
        self, event: Hello | Challenge | Authenticate | Welcome, fail: type[ProtocolError]
    ) -> None:
        step = self._handshake_done
        if self.state is not ConnState.HANDSHAKE or type(event) is not _HANDSHAKE[step]:
            expected = _HANDSHAKE[step].__name__ if step < len(_HANDSHAKE) else "no handshake"
            raise fail(f"{type(event).__name__} out of order (expected {expected})")
        match event:
            case Hello():
                if not 1 <= event.min_version <= event.max_version:
                    raise fail(f"bad version range {event.min_version}..{event.max_version}")
                self._hello = event
            case Challenge():
                self._on_challenge(event, fail)
            case Authenticate():
                if len(event.nonce) != NONCE_SIZE or len(event.proof) != PROOF_SIZE:
                    raise fail(f"nonce and proof must be {NONCE_SIZE} bytes each")
            case Welcome():
                self._on_welcome(event, fail)
        self._handshake_done += 1

    def _on_challenge(self, event: Challenge, fail: type[ProtocolError]) -> None:
        hello = self._hello
        assert hello is not None  # the order check put HELLO first
        if not hello.min_version <= event.version <= hello.max_version:
            raise fail(f"version {event.version} was not offered", ErrorCode.UNSUPPORTED_VERSION)
        if len(event.nonce) != NONCE_SIZE:
            raise fail(f"nonce must be {NONCE_SIZE} bytes")
        self.version = event.version

    def _on_welcome(self, event: Welcome, fail: type[ProtocolError]) -> None:
        if event.version != self.version:
            raise fail(f"WELCOME for version {event.version} after choosing {self.version}")
        if not 1 <= event.window <= MAX_WINDOW:
            raise fail(f"window {event.window} outside 1..{MAX_WINDOW}")
        if len(event.proof) != PROOF_SIZE:
            raise fail(f"proof must be {PROOF_SIZE} bytes")
        self.window, self.state = event.window, ConnState.OPEN
        # An echo nobody asked for means nothing (a peer ignores options it does not know).
        assert self._hello is not None  # the order check put HELLO first
        self._can_cancel = _asks_cancel(self._hello.options) and _asks_cancel(event.options)

    def _on_offer(self, event: Offer, fail: type[ProtocolError]) -> None:
        self._require_open(event, fail)
        if event.file_id in self.files:
            raise fail(f"file id {event.file_id} is already in flight")
        if len(self.files) >= self.window:
            raise fail(f"more than {self.window} files in flight")
        if len(event.digest) != DIGEST_SIZE:
            raise fail(f"digest must be {DIGEST_SIZE} bytes")
        if event.size > MAX_SIZE:
            raise fail(f"size {event.size} exceeds {MAX_SIZE}")
        self.files[event.file_id] = FileInFlight(event, digest_due=event.digest == DEFERRED_DIGEST)

    def _on_ready(self, event: Ready, fail: type[ProtocolError]) -> None:
        entry = self._file(event, FileState.OFFERED, fail)
        if event.offset > entry.offer.size:
            raise fail(f"READY offset {event.offset} is past the end ({entry.offer.size})")
        entry.state, entry.offset = FileState.READY, event.offset

    def _on_data_header(self, event: DataHeader, fail: type[ProtocolError]) -> None:
        entry = self._file(event, FileState.READY, fail)
        expected = entry.offer.size - entry.offset
        if event.offset != entry.offset or event.length != expected:
            raise fail(
                f"DATA for file {event.file_id} must cover {entry.offset}+{expected}, "
                f"got {event.offset}+{event.length}"
            )
        # Locally the whole payload goes out right after the header.
        entry.state = FileState.STREAMING if fail is _remote else FileState.SENT

    def _on_digest(self, event: Digest, fail: type[ProtocolError]) -> None:
        entry = self._file(event, FileState.SENT, fail)
        if not entry.digest_due:
            raise fail(f"DIGEST for file {event.file_id}, whose offer carried its digest")
        if event.digest == DEFERRED_DIGEST:
            raise fail(f"DIGEST for file {event.file_id} defers it again")
        entry.digest_due = False

    def _on_cancel(self, event: Cancel, fail: type[ProtocolError]) -> None:
        entry = self._file(event, None, fail)
        if not self._can_cancel:
            raise fail(f"CANCEL for file {event.file_id}, but the handshake did not negotiate it")
        # Only where no answer can be under way: the receiver answers a READY file after its
        # payload, and a deferred-digest file after its DIGEST.
        due = entry.state is FileState.READY or (entry.state is FileState.SENT and entry.digest_due)
        if not due:
            raise fail(
                f"CANCEL for file {event.file_id} while it is {entry.state.value}: only a READY "
                "file, or one whose deferred DIGEST is due, can be cancelled"
            )
        del self.files[event.file_id]

    def _on_answer(self, event: Ack | Nack, fail: type[ProtocolError]) -> None:
        entry = self._file(event, None, fail)
        early = entry.state is FileState.OFFERED
        if early and isinstance(event, Ack) and event.outcome is not Outcome.DUPLICATE:
            raise fail(f"file {event.file_id} stored before any data was sent")
        if not early and entry.state is not FileState.SENT:
            raise fail(f"answer for file {event.file_id} while it is {entry.state.value}")
        if not early and entry.digest_due:
            raise fail(f"answer for file {event.file_id} before its DIGEST")
        del self.files[event.file_id]

    def _file(
        self,
        event: Ready | DataHeader | Digest | Cancel | Ack | Nack,
        state: FileState | None,
        fail: type[ProtocolError],
    ) -> FileInFlight:
        self._require_open(event, fail)
        entry = self.files.get(event.file_id)
        if entry is None:
            raise fail(f"{type(event).__name__} for unknown file id {event.file_id}")
        if state is not None and entry.state is not state:
            raise fail(
                f"{type(event).__name__} for file {event.file_id} while it is {entry.state.value}"
            )
        return entry

    def _require_open(self, event: Event, fail: type[ProtocolError]) -> None:
        if self.state is not ConnState.OPEN:
            raise fail(f"{type(event).__name__} while the connection is {self.state.value}")


_local = LocalProtocolError
_remote = RemoteProtocolError


def _other(role: Role) -> Role:
    return Role.RECEIVER if role is Role.SENDER else Role.SENDER


def _asks_cancel(options: dict[str, bytes]) -> bool:
    return options.get(CANCEL_OPTION) == CANCEL_ON


def welcome_options(hello: Hello) -> dict[str, bytes]:
    """The options a receiver puts in its WELCOME for `hello`: the extensions both ends use.

    Each is echoed only when the HELLO asked for it, so a sender learns what it may use.
    """
    return {CANCEL_OPTION: CANCEL_ON} if _asks_cancel(hello.options) else {}


def negotiate(hello: Hello) -> int | None:
    """The version a receiver should choose for `hello`, or None if none is shared."""
    if hello.min_version <= PROTOCOL_VERSION <= hello.max_version:
        return PROTOCOL_VERSION
    return None
