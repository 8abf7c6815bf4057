"""The protocol's two state machines as tables: the connection, and each file in flight.

docs/protocol.md §5 specifies both as tables; these are the same tables in code, and
`Connection` consults them for every frame, so each transition is written down once here
and nowhere else (tests/unit/test_protocol_states.py checks that the two agree, row for
row).  A table says which frame, sent by whom, moves which state to which.  The conditions on
a frame's fields (offsets, sizes, a negotiated option, a deferred digest) stay in
`connection`, next to the values they check: a row here is necessary, not sufficient.

To add a frame: give it a row in each table it moves (and in §5), then its conditions in
`Connection._apply`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from .events import Ack, AskDigest, Cancel, DataEnd, DataHeader, Digest, Nack, Offer, Ready, Role
from .frames import FrameType


class ConnState(enum.Enum):
    """What a user of a `Connection` needs to know: handshaking, open for files, or closed."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class ConnPhase(enum.Enum):
    """The connection's state as the table tracks it: HANDSHAKE split into its four steps,
    each of which admits only the next handshake frame.  Values are the labels of §5.1."""

    HANDSHAKE_START = "HANDSHAKE (start)"
    HANDSHAKE_HELLO = "HANDSHAKE (hello)"
    HANDSHAKE_CHALLENGE = "HANDSHAKE (challenge)"
    HANDSHAKE_PROOF = "HANDSHAKE (proof)"
    OPEN = "OPEN"
    CLOSED = "CLOSED"

    @property
    def state(self) -> ConnState:
        return ConnState[self.name.partition("_")[0]]


class FileState(enum.Enum):
    """Where one file in flight stands.  A file not in flight has no state (None in the table)."""

    OFFERED = "offered"  # offer sent, no answer yet
    DIGEST_ASKED = "digest asked"  # the receiver wants the deferred digest before any data
    READY = "ready"  # receiver asked for bytes from an offset
    STREAMING = "streaming"  # payload under way (on the receiving side only)
    SENT = "sent"  # all payload bytes are on the wire / in; waiting for ACK or NACK


class FileEvent(enum.Enum):
    """What moves one file: a frame about it, or the last byte of its payload.

    ACK counts once per outcome, because only ACK DUPLICATE may answer a file before its data.
    Values are the labels of §5.2.
    """

    OFFER = "OFFER"
    READY = "READY"
    DATA = "DATA header"
    PAYLOAD_END = "last payload byte"
    DIGEST = "DIGEST"
    CANCEL = "CANCEL"
    ASK_DIGEST = "ASK_DIGEST"
    ACK_STORED = "ACK STORED"
    ACK_KEPT_BESIDE = "ACK KEPT_BESIDE"
    ACK_DUPLICATE = "ACK DUPLICATE"
    NACK = "NACK"


FileFrame = Offer | Ready | DataHeader | DataEnd | Digest | Cancel | AskDigest | Ack | Nack

# Before its OFFER and once done, a file is not in the table and its id is free.
NOT_IN_FLIGHT: Final = None

_S, _R = Role.SENDER, Role.RECEIVER
_P, _F, _E = ConnPhase, FrameType, FileEvent

# (phase, frame, who sends it) -> the phase after it.  A frame with no row is a protocol error.
CONNECTION_TRANSITIONS: Final[Mapping[tuple[ConnPhase, FrameType, Role], ConnPhase]] = {
    (_P.HANDSHAKE_START, _F.HELLO, _S): _P.HANDSHAKE_HELLO,
    (_P.HANDSHAKE_HELLO, _F.CHALLENGE, _R): _P.HANDSHAKE_CHALLENGE,
    (_P.HANDSHAKE_CHALLENGE, _F.AUTHENTICATE, _S): _P.HANDSHAKE_PROOF,
    (_P.HANDSHAKE_PROOF, _F.WELCOME, _R): _P.OPEN,
    # The per-file frames leave the connection open; FILE_TRANSITIONS decides the rest.
    (_P.OPEN, _F.OFFER, _S): _P.OPEN,
    (_P.OPEN, _F.READY, _R): _P.OPEN,
    (_P.OPEN, _F.DATA, _S): _P.OPEN,
    (_P.OPEN, _F.DIGEST, _S): _P.OPEN,
    (_P.OPEN, _F.CANCEL, _S): _P.OPEN,
    (_P.OPEN, _F.ASK_DIGEST, _R): _P.OPEN,
    (_P.OPEN, _F.ACK, _R): _P.OPEN,
    (_P.OPEN, _F.NACK, _R): _P.OPEN,
    (_P.OPEN, _F.BYE, _S): _P.CLOSED,
    # Either end may give up at any time, even after the connection closed.
    **{(phase, _F.ERROR, role): _P.CLOSED for phase in ConnPhase for role in Role},
}

# (state, event, who sends it) -> the state after it.  An event with no row is a protocol error.
FILE_TRANSITIONS: Final[Mapping[tuple[FileState | None, FileEvent, Role], FileState | None]] = {
    (NOT_IN_FLIGHT, _E.OFFER, _S): FileState.OFFERED,
    (FileState.OFFERED, _E.READY, _R): FileState.READY,
    (FileState.OFFERED, _E.ACK_DUPLICATE, _R): NOT_IN_FLIGHT,
    (FileState.OFFERED, _E.NACK, _R): NOT_IN_FLIGHT,
    (FileState.OFFERED, _E.ASK_DIGEST, _R): FileState.DIGEST_ASKED,
    # The digest, sent early, makes it an offer like one that carried it from the start.
    (FileState.DIGEST_ASKED, _E.DIGEST, _S): FileState.OFFERED,
    (FileState.DIGEST_ASKED, _E.CANCEL, _S): NOT_IN_FLIGHT,
    (FileState.READY, _E.DATA, _S): FileState.STREAMING,
    (FileState.READY, _E.CANCEL, _S): NOT_IN_FLIGHT,
    (FileState.STREAMING, _E.PAYLOAD_END, _S): FileState.SENT,
    (FileState.SENT, _E.DIGEST, _S): FileState.SENT,
    (FileState.SENT, _E.CANCEL, _S): NOT_IN_FLIGHT,
    (FileState.SENT, _E.ACK_STORED, _R): NOT_IN_FLIGHT,
    (FileState.SENT, _E.ACK_KEPT_BESIDE, _R): NOT_IN_FLIGHT,
    (FileState.SENT, _E.ACK_DUPLICATE, _R): NOT_IN_FLIGHT,
    (FileState.SENT, _E.NACK, _R): NOT_IN_FLIGHT,
}

# The frames each role may send at all: those it sends in some row.
SENDS: Final[Mapping[Role, frozenset[FrameType]]] = {
    role: frozenset(frame for _, frame, sender in CONNECTION_TRANSITIONS if sender is role)
    for role in Role
}


def file_event(event: FileFrame) -> FileEvent:
    """The FILE_TRANSITIONS event that `event` is."""
    match event:
        case Offer():
            return FileEvent.OFFER
        case Ready():
            return FileEvent.READY
        case DataHeader():
            return FileEvent.DATA
        case DataEnd():
            return FileEvent.PAYLOAD_END
        case Digest():
            return FileEvent.DIGEST
        case Cancel():
            return FileEvent.CANCEL
        case AskDigest():
            return FileEvent.ASK_DIGEST
        case Ack():
            return FileEvent[f"ACK_{event.outcome.name}"]
        case Nack():
            return FileEvent.NACK


def expected_frames(phase: ConnPhase) -> list[FrameType]:
    """The frames other than ERROR that may come in `phase`, from either end, for messages."""
    return [
        frame
        for at, frame, _ in CONNECTION_TRANSITIONS
        if at is phase and frame is not FrameType.ERROR
    ]


def expected_file_events(state: FileState | None) -> list[FileEvent]:
    """The events that may come for a file in `state`, for error messages."""
    return [event for at, event, _ in FILE_TRANSITIONS if at is state]
