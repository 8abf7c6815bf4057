"""scanxfer wire protocol v1, sans-IO: bytes in -> events out, events -> bytes.

No sockets and no files here, so the whole protocol can be tested by joining two
`Connection` objects in memory, and the receiver and sender share one definition of
what is legal.  The byte layouts, state machine and codes are specified in
docs/protocol.md; this module is their only implementation (the state machines as tables
in `states`, the byte layouts in `frames`).

Two error types, as in h11: `RemoteProtocolError` means the peer broke the rules
(close the connection, optionally after sending it an Error frame), and
`LocalProtocolError` means our own code tried to send something illegal (a bug).
"""

from .connection import Connection, FileInFlight, negotiate, welcome_options
from .events import (
    CANCEL_ON,
    CANCEL_OPTION,
    DEFERRED_DIGEST,
    DIGEST_SIZE,
    INSTANCE_OPTION,
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
    NackReason,
    Offer,
    Outcome,
    ProtocolError,
    Ready,
    RemoteProtocolError,
    Role,
    Welcome,
)
from .frames import MAGIC, MAX_BODY, FrameType, decode_body, encode
from .states import ConnPhase, ConnState, FileEvent, FileState

__all__ = [
    "CANCEL_ON",
    "CANCEL_OPTION",
    "DEFERRED_DIGEST",
    "DIGEST_SIZE",
    "INSTANCE_OPTION",
    "MAGIC",
    "MAX_BODY",
    "MAX_SIZE",
    "MAX_WINDOW",
    "NEED_DATA",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "PROTOCOL_VERSION",
    "Ack",
    "Authenticate",
    "Bye",
    "Cancel",
    "Challenge",
    "ConnPhase",
    "ConnState",
    "Connection",
    "ConnectionClosed",
    "DataChunk",
    "DataEnd",
    "DataHeader",
    "Digest",
    "Error",
    "ErrorCode",
    "Event",
    "FileEvent",
    "FileInFlight",
    "FileState",
    "FrameType",
    "Hello",
    "LocalProtocolError",
    "Nack",
    "NackReason",
    "Offer",
    "Outcome",
    "ProtocolError",
    "Ready",
    "RemoteProtocolError",
    "Role",
    "Welcome",
    "decode_body",
    "encode",
    "negotiate",
    "welcome_options",
]
