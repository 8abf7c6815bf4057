"""Protocol v1 events: what the two ends say to each other, as frozen dataclasses.

The vocabulary of the protocol without its bytes: the constants the rules are made of,
the codes carried by ERROR, NACK and ACK, the two error types, and one event per frame.
Their byte layouts are `frames`; the rules of when each is legal are `connection`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

PROTOCOL_VERSION = 1
DIGEST_SIZE = 16  # xxh3-128
# An OFFER with this digest promises a DIGEST frame right after its payload instead: the
# sender hashes while it sends, rather than reading a big file once more beforehand.
DEFERRED_DIGEST = bytes(DIGEST_SIZE)
MAX_WINDOW = 1024
MAX_SIZE = 2**63 - 1  # a file size or offset must fit a signed 64-bit off_t
# HELLO option: random bytes naming one sender process across its reconnections.
INSTANCE_OPTION = "instance"
# HELLO option, echoed in WELCOME by a receiver that takes CANCEL frames; its value is
# CANCEL_ON.  A peer that does not know it ignores it, so the sender learns from the
# echo, not from the receiver's version, whether it may withdraw a file.
CANCEL_OPTION = "cancel"
CANCEL_ON = b"\x01"
# HELLO option, echoed in WELCOME the same way: the receiver may answer an OFFER with a
# deferred digest by ASK_DIGEST, so a file it may hold already is told by its digest before
# any of its bytes cross again.  Its value is ASK_DIGEST_ON.
ASK_DIGEST_OPTION = "ask_digest"
ASK_DIGEST_ON = b"\x01"
# HELLO option, echoed in WELCOME the same way: every frame after WELCOME, and every DATA
# payload, is followed by a tag (docs/protocol.md 2.1).  Asked for and echoed only on plain
# TCP (`tls: false`): TLS authenticates every record already.  Its value is FRAME_AUTH_ON.
FRAME_AUTH_OPTION = "frame_auth"
FRAME_AUTH_ON = b"\x01"

NONCE_SIZE = 32
PROOF_SIZE = 32  # HMAC-SHA256


class ErrorCode(enum.IntEnum):
    """Why a whole connection ends (the Error frame)."""

    PROTOCOL_ERROR = 1
    UNSUPPORTED_VERSION = 2
    AUTH_FAILED = 3
    SHUTTING_DOWN = 4
    TOO_MANY_CONNECTIONS = 5
    TIMEOUT = 6
    INTERNAL_ERROR = 7


class NackReason(enum.IntEnum):
    """Why one file was refused; the connection goes on."""

    BAD_NAME = 1
    TOO_LARGE = 2
    NO_SPACE = 3
    DIGEST_MISMATCH = 4
    BUSY = 5
    IO_ERROR = 6
    BAD_OFFER = 7
    INTERNAL = 8

    @property
    def retryable(self) -> bool:
        """The default answer to "can sending it again help?" for this reason."""
        return self not in (NackReason.BAD_NAME, NackReason.TOO_LARGE, NackReason.BAD_OFFER)


class Outcome(enum.IntEnum):
    """How an acknowledged file is stored on the receiver."""

    STORED = 1  # under the offered path
    DUPLICATE = 2  # an identical file was already stored; nothing new written
    KEPT_BESIDE = 3  # the path held different content; stored under a clash name


class Role(enum.Enum):
    SENDER = "sender"
    RECEIVER = "receiver"


class ProtocolError(Exception):
    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids: drop the connection."""


class FrameAuthError(RemoteProtocolError):
    """A frame or payload segment failed its tag: altered, injected, replayed, reordered, or
    one before it is missing (docs/protocol.md 2.1).

    Nothing of it is handed on, nor anything after it: the connection ends.
    """


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    name: str
    min_version: int = PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION
    options: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Challenge:
    """The receiver's answer to HELLO: the version it chose and its fresh nonce."""

    version: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Authenticate:
    """The sender's fresh nonce and its proof of the key (see protocol.auth)."""

    nonce: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class Welcome:
    """The sender is authenticated; `proof` shows the receiver knows the sender's key too."""

    name: str
    window: int
    proof: bytes
    version: int = PROTOCOL_VERSION
    options: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class Bye:
    pass


@dataclass(frozen=True, slots=True)
class Offer:
    file_id: int
    path: str
    size: int
    mtime_ns: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    file_id: int
    offset: int


@dataclass(frozen=True, slots=True)
class DataHeader:
    """Announces `length` raw payload bytes for the file, starting at `offset`."""

    file_id: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class DataChunk:
    """A slice of payload.  `data` may view the caller's buffer: use it before
    the next `receive_data` call."""

    file_id: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class DataEnd:
    file_id: int


@dataclass(frozen=True, slots=True)
class Digest:
    """The digest of a file offered with DEFERRED_DIGEST, sent right after its payload."""

    file_id: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Cancel:
    """The sender withdraws a file it can no longer send as offered (see docs/protocol.md 3.9b).

    Legal only when both ends negotiated CANCEL_OPTION: for a READY file, instead of its
    DATA, or after the payload of a deferred-digest file, instead of its DIGEST.  The file
    is done at once on both ends and gets no answer.
    """

    file_id: int


@dataclass(frozen=True, slots=True)
class AskDigest:
    """The receiver asks for the digest of a file offered with DEFERRED_DIGEST, before its data.

    Legal only when both ends negotiated ASK_DIGEST_OPTION, for an OFFERED file whose digest
    is deferred: the receiver holds a file of that path and size (stored, or a complete
    partial) and can tell from the digest whether the bytes need to cross again.  The
    sender answers with DIGEST (or CANCEL), and the file is OFFERED again, its digest known.
    """

    file_id: int


@dataclass(frozen=True, slots=True)
class Ack:
    file_id: int
    outcome: Outcome
    stored_path: str


@dataclass(frozen=True, slots=True)
class Nack:
    file_id: int
    reason: NackReason
    retryable: bool
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection at a frame boundary."""


class NeedData(enum.Enum):
    """More bytes, please: a one-member enum, so that `is NEED_DATA` narrows for mypy."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA

Event = (
    Hello
    | Challenge
    | Authenticate
    | Welcome
    | Error
    | Bye
    | Offer
    | Ready
    | DataHeader
    | DataChunk
    | DataEnd
    | Digest
    | Cancel
    | AskDigest
    | Ack
    | Nack
    | ConnectionClosed
)
