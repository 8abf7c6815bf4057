"""Protocol v1 state machine: one end of a connection, sans-IO.

Feed it the bytes read from the peer and it returns events; give it events and it
returns the bytes to write.  Both ends keep the same table of files in flight, so
each refuses what the other may not do.  Which frame may come when is the tables in
`states`; this module checks the frames' fields and keeps the state they move.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from .buffer import ReceiveBuffer
from .events import (
    ASK_DIGEST_ON,
    ASK_DIGEST_OPTION,
    CANCEL_ON,
    CANCEL_OPTION,
    DEFERRED_DIGEST,
    DIGEST_SIZE,
    FRAME_AUTH_ON,
    FRAME_AUTH_OPTION,
    MAX_SIZE,
    MAX_WINDOW,
    NEED_DATA,
    NONCE_SIZE,
    PROOF_SIZE,
    PROTOCOL_VERSION,
    Ack,
    AskDigest,
    Authenticate,
    Bye,
    Cancel,
    Challenge,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataHeader,
    Digest,
    ErrorCode,
    Event,
    Hello,
    LocalProtocolError,
    Nack,
    NeedData,
    Offer,
    ProtocolError,
    Ready,
    RemoteProtocolError,
    Role,
    Welcome,
)
from .frames import FRAME_HEAD, FRAME_TYPES, MAX_BODY, FrameType, decode_body, encode, parse_enum
from .integrity import SEGMENT, TAG_SIZE, FrameAuth, check_segment, segments
from .states import (
    CONNECTION_TRANSITIONS,
    FILE_TRANSITIONS,
    NOT_IN_FLIGHT,
    SENDS,
    ConnPhase,
    ConnState,
    FileEvent,
    FileFrame,
    FileState,
    expected_file_events,
    expected_frames,
    file_event,
)


@dataclass(slots=True)
class FileInFlight:
    offer: Offer
    state: FileState = FileState.OFFERED
    offset: int = 0
    digest_due: bool = False  # offered with DEFERRED_DIGEST, its DIGEST not yet sent


# The event class of each frame, to name frames in messages as the caller knows them.
_EVENT_NAMES = {frame: kind.__name__ for kind, frame in FRAME_TYPES.items()}


@dataclass(slots=True)
class _Payload:
    """A DATA payload on its way: whose, and how many bytes are still to come.

    With frame authentication also its segments (integrity.SEGMENT): the tags still due,
    and for our own payload the tag being computed and the bytes left in its segment.
    """

    file_id: int
    remaining: int
    tags_due: int = 0
    passed: int = 0  # bytes of the segments checked so far
    mac: hashlib.blake2b | None = None
    segment_left: int = 0
    checked: deque[memoryview] = field(default_factory=deque)  # received, tag checked


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
        self.phase = ConnPhase.HANDSHAKE_START
        self.version: int | None = None
        self.files: dict[int, FileInFlight] = {}
        self._hello: Hello | None = None
        self._can_cancel = False
        self._can_ask_digest = False
        self._can_authenticate = False
        self._tags = FrameAuth(sender_side=role is Role.SENDER)
        self._input = ReceiveBuffer()
        self._payload: _Payload | None = None  # inside a DATA payload
        self._outgoing: _Payload | None = None  # our payload, while it still needs its tag
        self._eof = False

    @property
    def state(self) -> ConnState:
        """Handshaking, open for files, or closed."""
        return self.phase.state

    @property
    def can_cancel(self) -> bool:
        """Whether the sender may send CANCEL: its HELLO asked, and the WELCOME echoed it."""
        return self._can_cancel

    @property
    def can_ask_digest(self) -> bool:
        """Whether the receiver may send ASK_DIGEST: the HELLO asked, and the WELCOME echoed it."""
        return self._can_ask_digest

    @property
    def authenticates_frames(self) -> bool:
        """Whether every frame and payload after WELCOME carries a tag (docs/protocol.md 2.1).

        Negotiated by FRAME_AUTH_OPTION, which each end asks for only on plain TCP.
        """
        return self._can_authenticate

    def use_frame_key(self, server_key: bytes) -> None:
        """The key the frame keys come from, should the handshake negotiate them.

        Both ends give their sender's `server_key` before WELCOME passes: the sender derives
        it from its secret, the receiver reads it from its key record once the proof checked.
        """
        self._tags.use_key(server_key)

    # -- outgoing --------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Check that `event` is legal now, update the state, and return its bytes.

        After a DataHeader the caller must put exactly `length` payload bytes on
        the wire before anything else (e.g. with socket.sendfile).
        """
        if FRAME_TYPES.get(type(event)) not in SENDS[self.role]:
            raise LocalProtocolError(f"a {self.role.value} cannot send {type(event).__name__}")
        if self._outgoing is not None:
            due = self._outgoing.remaining
            raise LocalProtocolError(f"{type(event).__name__} with {due} payload bytes due")
        raw = encode(event)
        self._apply(event, self.role)
        if not self._tags.on:
            self._record_handshake(event, raw)
            return raw
        sealed = raw + self._tags.seal(raw)
        if isinstance(event, DataHeader):
            self._outgoing = _Payload(event.file_id, event.length)
            self._next_segment_out(self._outgoing)
            if not event.length:
                sealed += self.send_payload(b"")  # an empty payload still has its tag
        return sealed

    def send_payload(self, data: bytes | memoryview) -> bytes:
        """The bytes to put on the wire for payload bytes about to go out.

        With frame authentication, `data` with the tag of each segment it completes right
        after that segment's last byte; without, `data` itself, and the payload need not
        pass here at all (the sender streams it with sendfile).
        """
        outgoing = self._outgoing
        if outgoing is None:
            if self._tags.on:
                raise LocalProtocolError("payload bytes without a DATA header")
            return bytes(data)
        if len(data) > outgoing.remaining:
            raise LocalProtocolError(
                f"{len(data)} payload bytes for file {outgoing.file_id}, {outgoing.remaining} due"
            )
        view = memoryview(data).cast("B")
        pieces: list[bytes | memoryview] = []
        while True:
            piece, view = view[: outgoing.segment_left], view[outgoing.segment_left :]
            assert outgoing.mac is not None  # set for each segment
            outgoing.mac.update(piece)
            pieces.append(piece)
            outgoing.remaining -= len(piece)
            outgoing.segment_left -= len(piece)
            if not outgoing.segment_left:
                pieces.append(outgoing.mac.digest())
                if not outgoing.remaining:
                    self._outgoing = None
                    break
                self._next_segment_out(outgoing)
            if not view:
                break
        return b"".join(pieces)

    def _next_segment_out(self, outgoing: _Payload) -> None:
        outgoing.mac = self._tags.next_outgoing()
        outgoing.segment_left = min(SEGMENT, outgoing.remaining)

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
        frame = self._next_frame()
        if frame is NEED_DATA:
            if self._eof:
                if self._input:
                    raise RemoteProtocolError("connection closed in the middle of a frame")
                return ConnectionClosed()
            self._input.own()
            return NEED_DATA
        event, raw = frame
        peer = _other(self.role)
        if FRAME_TYPES[type(event)] not in SENDS[peer]:
            raise RemoteProtocolError(f"a {self.role.value} cannot receive {type(event).__name__}")
        self._apply(event, peer)
        self._record_handshake(event, raw)
        if isinstance(event, DataHeader):
            tags = segments(event.length) if self._tags.on else 0
            self._payload = _Payload(event.file_id, event.length, tags)
        return event

    def _next_payload_event(self) -> DataChunk | DataEnd | NeedData:
        payload = self._payload
        assert payload is not None  # called only inside a payload
        if payload.checked:
            return DataChunk(payload.file_id, payload.checked.popleft())
        if payload.tags_due:
            return self._check_segment(payload)
        if payload.remaining == 0:
            self._payload = None
            end = DataEnd(payload.file_id)
            entry, after = self._in_flight(end, _other(self.role), RemoteProtocolError)
            self._settle(payload.file_id, entry, after)
            return end
        if not self._input:
            if self._eof:
                due = payload.remaining
                raise RemoteProtocolError(f"connection closed with {due} payload bytes due")
            return NEED_DATA
        chunk = self._input.take_view(payload.remaining)
        payload.remaining -= len(chunk)
        return DataChunk(payload.file_id, chunk)

    def _check_segment(self, payload: _Payload) -> DataChunk | DataEnd | NeedData:
        """Take the next segment once it and its tag are here; hand it on once they match.

        So no payload byte reaches the caller unchecked, and at most a segment waits here.
        """
        size = min(SEGMENT, payload.remaining)
        if len(self._input) < size + TAG_SIZE:
            if self._eof:
                due = payload.remaining
                raise RemoteProtocolError(f"connection closed with {due} payload bytes due")
            self._input.own()
            return NEED_DATA
        mac, left = self._tags.next_incoming(), size
        pieces: list[memoryview] = []
        while left:
            piece = self._input.take_view(left)
            mac.update(piece)
            pieces.append(piece)
            left -= len(piece)
        check_segment(payload.file_id, payload.passed, mac, self._input.take(TAG_SIZE))
        payload.checked.extend(pieces)
        payload.remaining -= size
        payload.passed += size
        payload.tags_due -= 1
        return self._next_payload_event()

    def _next_frame(self) -> tuple[Event, bytes] | NeedData:
        """The next frame as an event and the bytes it came in, once all of them are here."""
        if len(self._input) < FRAME_HEAD.size:
            return NEED_DATA
        kind_value, length = FRAME_HEAD.unpack(self._input.peek(FRAME_HEAD.size))
        kind = parse_enum(FrameType, kind_value, "frame type")
        # Checked before buffering the body: a peer never sizes our allocations.
        if length > MAX_BODY:
            raise RemoteProtocolError(f"{kind.name} frame of {length} bytes exceeds {MAX_BODY}")
        tag_size = TAG_SIZE if self._tags.on else 0
        if len(self._input) < FRAME_HEAD.size + length + tag_size:
            return NEED_DATA
        raw = self._input.take(FRAME_HEAD.size + length)
        if self._tags.on:
            # Before a field is read: nothing of a frame that fails its tag is acted on.
            self._tags.check(kind.name, raw, self._input.take(TAG_SIZE))
        return decode_body(kind, raw[FRAME_HEAD.size :]), raw

    def _record_handshake(self, event: Event, raw: bytes) -> None:
        """Hash a handshake frame; after WELCOME, switch frame authentication on if agreed."""
        if not isinstance(event, Hello | Challenge | Authenticate | Welcome):
            return
        self._tags.record(raw)
        if isinstance(event, Welcome) and self._can_authenticate:
            self._tags.start()

    # -- the rules, shared by both directions -----------------------------------

    def _apply(self, event: Event, sent_by: Role) -> None:
        """Check `event` from `sent_by` against the tables and its fields, then take its step.

        Every check comes before any change, so a refused event changes nothing.
        """
        fail = LocalProtocolError if sent_by is self.role else RemoteProtocolError
        after = CONNECTION_TRANSITIONS.get((self.phase, FRAME_TYPES[type(event)], sent_by))
        if after is None:
            raise fail(self._misplaced(event, fail))
        match event:
            case Hello() | Challenge() | Authenticate() | Welcome():
                self._on_handshake(event, fail)
            case Offer():
                self._on_offer(event, sent_by, fail)
            case Ready():
                self._on_ready(event, sent_by, fail)
            case DataHeader():
                self._on_data_header(event, sent_by, fail)
            case Digest():
                self._on_digest(event, sent_by, fail)
            case Cancel():
                self._on_cancel(event, sent_by, fail)
            case AskDigest():
                self._on_ask_digest(event, sent_by, fail)
            case Ack() | Nack():
                self._on_answer(event, sent_by, fail)
            case Bye():
                if self.files:
                    raise fail(f"BYE with {len(self.files)} files still in flight")
        self.phase = after

    def _misplaced(self, event: Event, fail: type[ProtocolError]) -> str:
        """Why `event` has no row in CONNECTION_TRANSITIONS now."""
        name = type(event).__name__
        if self.phase is ConnPhase.CLOSED:
            local = fail is LocalProtocolError
            return "connection is closed" if local else f"{name} after the connection closed"
        if isinstance(event, Hello | Challenge | Authenticate | Welcome):
            if self.state is not ConnState.HANDSHAKE:
                return f"{name} out of order (the handshake is over)"
            (due,) = expected_frames(self.phase)  # each step admits one frame
            return f"{name} out of order (expected {_EVENT_NAMES[due]})"
        return f"{name} while the connection is {self.state.value}"

    def _on_handshake(
        self, event: Hello | Challenge | Authenticate | Welcome, fail: type[ProtocolError]
    ) -> None:
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

    def _on_challenge(self, event: Challenge, fail: type[ProtocolError]) -> None:
        hello = self._hello
        assert hello is not None  # the table put HELLO first
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
        self.window = event.window
        # An echo nobody asked for means nothing (a peer ignores options it does not know).
        assert self._hello is not None  # the table put HELLO first
        self._can_cancel = _asks_cancel(self._hello.options) and _asks_cancel(event.options)
        self._can_ask_digest = _asks_for_digests(self._hello.options) and _asks_for_digests(
            event.options
        )
        self._can_authenticate = asks_frame_auth(self._hello) and _asks(
            event.options, FRAME_AUTH_OPTION, FRAME_AUTH_ON
        )

    def _on_offer(self, event: Offer, sent_by: Role, fail: type[ProtocolError]) -> None:
        after = self._file_step(event, self.files.get(event.file_id), sent_by, fail)
        if len(self.files) >= self.window:
            raise fail(f"more than {self.window} files in flight")
        if len(event.digest) != DIGEST_SIZE:
            raise fail(f"digest must be {DIGEST_SIZE} bytes")
        if event.size > MAX_SIZE:
            raise fail(f"size {event.size} exceeds {MAX_SIZE}")
        assert after is not None  # an OFFER puts the file in flight
        self.files[event.file_id] = FileInFlight(
            event, after, digest_due=event.digest == DEFERRED_DIGEST
        )

    def _on_ready(self, event: Ready, sent_by: Role, fail: type[ProtocolError]) -> None:
        entry, after = self._in_flight(event, sent_by, fail)
        if event.offset > entry.offer.size:
            raise fail(f"READY offset {event.offset} is past the end ({entry.offer.size})")
        entry.offset = event.offset
        self._settle(event.file_id, entry, after)

    def _on_data_header(self, event: DataHeader, sent_by: Role, fail: type[ProtocolError]) -> None:
        entry, after = self._in_flight(event, sent_by, fail)
        expected = entry.offer.size - entry.offset
        if event.offset != entry.offset or event.length != expected:
            raise fail(
                f"DATA for file {event.file_id} must cover {entry.offset}+{expected}, "
                f"got {event.offset}+{event.length}"
            )
        self._settle(event.file_id, entry, after)
        if sent_by is self.role:
            # Our own payload goes out whole, right after its header: it has ended for us.
            self._settle(event.file_id, *self._in_flight(DataEnd(event.file_id), sent_by, fail))

    def _on_digest(self, event: Digest, sent_by: Role, fail: type[ProtocolError]) -> None:
        entry, after = self._in_flight(event, sent_by, fail)
        if not entry.digest_due:
            raise fail(f"DIGEST for file {event.file_id}, whose offer carried its digest")
        if event.digest == DEFERRED_DIGEST:
            raise fail(f"DIGEST for file {event.file_id} defers it again")
        entry.digest_due = False
        self._settle(event.file_id, entry, after)

    def _on_ask_digest(self, event: AskDigest, sent_by: Role, fail: type[ProtocolError]) -> None:
        if not self._can_ask_digest:
            raise fail(
                f"ASK_DIGEST for file {event.file_id}, but the handshake did not negotiate it"
            )
        entry, after = self._in_flight(event, sent_by, fail)
        if not entry.digest_due:
            raise fail(f"ASK_DIGEST for file {event.file_id}, whose offer carried its digest")
        self._settle(event.file_id, entry, after)

    def _on_cancel(self, event: Cancel, sent_by: Role, fail: type[ProtocolError]) -> None:
        if not self._can_cancel:
            raise fail(f"CANCEL for file {event.file_id}, but the handshake did not negotiate it")
        entry, after = self._in_flight(event, sent_by, fail)
        # A file whose digest is known gets its answer right after its payload: too late.
        if entry.state is FileState.SENT and not entry.digest_due:
            raise fail(
                f"CANCEL for file {event.file_id} while it is {entry.state.value}: only a READY "
                "file, or one whose deferred DIGEST is due, can be cancelled"
            )
        self._settle(event.file_id, entry, after)

    def _on_answer(self, event: Ack | Nack, sent_by: Role, fail: type[ProtocolError]) -> None:
        entry, after = self._in_flight(event, sent_by, fail)
        if entry.state is FileState.SENT and entry.digest_due:
            raise fail(f"answer for file {event.file_id} before its DIGEST")
        self._settle(event.file_id, entry, after)

    def _in_flight(
        self, event: FileFrame, sent_by: Role, fail: type[ProtocolError]
    ) -> tuple[FileInFlight, FileState | None]:
        """The entry of the file in flight that `event` is about, and its state after it."""
        entry = self.files.get(event.file_id)
        after = self._file_step(event, entry, sent_by, fail)
        if entry is None:  # no row but OFFER's starts from "not in flight"
            raise fail(_file_refusal(file_event(event), event.file_id, None))
        return entry, after

    @staticmethod
    def _file_step(
        event: FileFrame, entry: FileInFlight | None, sent_by: Role, fail: type[ProtocolError]
    ) -> FileState | None:
        """The state FILE_TRANSITIONS gives the file after `event`; raise if it has no row."""
        step = file_event(event)
        state = None if entry is None else entry.state
        key = (state, step, sent_by)
        if key not in FILE_TRANSITIONS:
            raise fail(_file_refusal(step, event.file_id, state))
        return FILE_TRANSITIONS[key]

    def _settle(self, file_id: int, entry: FileInFlight, after: FileState | None) -> None:
        """Move the file to `after`; a file that is done leaves the table and frees its id."""
        if after is NOT_IN_FLIGHT:
            del self.files[file_id]
        else:
            entry.state = after


def _file_refusal(step: FileEvent, file_id: int, state: FileState | None) -> str:
    """Why `step` has no row in FILE_TRANSITIONS for a file in `state`."""
    if state is None:
        return f"{step.value} for unknown file id {file_id}"
    if step is FileEvent.OFFER:
        return f"file id {file_id} is already in flight"
    *others, last = [event.value for event in expected_file_events(state)]
    allowed = f"{', '.join(others)} or {last}" if others else last
    return f"{step.value} for file {file_id} while it is {state.value} (only {allowed} may come)"


def _other(role: Role) -> Role:
    return Role.RECEIVER if role is Role.SENDER else Role.SENDER


def _asks(options: dict[str, bytes], key: str, on: bytes) -> bool:
    return options.get(key) == on


def _asks_cancel(options: dict[str, bytes]) -> bool:
    return _asks(options, CANCEL_OPTION, CANCEL_ON)


def _asks_for_digests(options: dict[str, bytes]) -> bool:
    return _asks(options, ASK_DIGEST_OPTION, ASK_DIGEST_ON)


def asks_frame_auth(hello: Hello) -> bool:
    """Whether the sender of `hello` offers to authenticate every frame (FRAME_AUTH_OPTION)."""
    return _asks(hello.options, FRAME_AUTH_OPTION, FRAME_AUTH_ON)


def welcome_options(hello: Hello, authenticate_frames: bool = False) -> dict[str, bytes]:
    """The options a receiver puts in its WELCOME for `hello`: the extensions both ends use.

    Each is echoed only when the HELLO asked for it, so a sender learns what it may use.
    Frame authentication only when `authenticate_frames` too: a receiver asks for it on
    plain TCP alone, since TLS authenticates every record already.
    """
    options = {}
    if _asks_cancel(hello.options):
        options[CANCEL_OPTION] = CANCEL_ON
    if _asks_for_digests(hello.options):
        options[ASK_DIGEST_OPTION] = ASK_DIGEST_ON
    if authenticate_frames and asks_frame_auth(hello):
        options[FRAME_AUTH_OPTION] = FRAME_AUTH_ON
    return options


def negotiate(hello: Hello) -> int | None:
    """The version a receiver should choose for `hello`, or None if none is shared."""
    if hello.min_version <= PROTOCOL_VERSION <= hello.max_version:
        return PROTOCOL_VERSION
    return None
