"""Frame authentication for plain TCP (`tls: false`): a tag after every frame and payload.

TLS authenticates every record, so with TLS nothing here is used.  Without it, each end
seals what it sends with the key of its direction (`auth.frame_keys`) and a sequence number
that both ends count, starting at 0 after WELCOME: one number per frame, and one per
SEGMENT bytes of a DATA payload.  A frame that was altered, injected, replayed, reordered
or left out fails its tag, because its bytes or the number it was sealed under differ from
what the peer expects.  A payload is tagged by segments so that the receiver can check its
bytes before it stores them, holding no more than a segment, and keep what was checked when
the connection ends mid-file, for resume.

The tag is keyed BLAKE2b cut to TAG_SIZE bytes over the sequence number (u64 big-endian)
and the bytes: keyed BLAKE2b is a MAC by design (no HMAC construction needed), and in
software, as on a Raspberry Pi 4 without SHA-256 instructions, it runs faster than SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from . import auth
from .events import FrameAuthError, LocalProtocolError

TAG_SIZE = 16
SEGMENT = 1 << 16  # payload bytes per tag; the last segment of a payload may be shorter
_SEQUENCE = struct.Struct(">Q")


class _Direction:
    """The tags of one direction of one connection, in order."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.sequence = 0

    def begin(self) -> hashlib.blake2b:
        """A tag under the next sequence number, to be fed the bytes it covers."""
        mac = hashlib.blake2b(key=self._key, digest_size=TAG_SIZE)
        mac.update(_SEQUENCE.pack(self.sequence))
        self.sequence += 1
        return mac


class FrameAuth:
    """Frame authentication at one end of one connection (docs/protocol.md 2.1).

    It hashes the handshake frames as they pass; once WELCOME has passed and both ends
    agreed, `start` derives the keys, and from then on `seal` tags what this end sends and
    `check` what it receives.
    """

    def __init__(self, sender_side: bool) -> None:
        self._sender_side = sender_side
        self._server_key: bytes | None = None
        self._handshake = hashlib.sha256()  # the handshake frames, as they crossed the wire
        self._ours: _Direction | None = None
        self._theirs: _Direction | None = None

    @property
    def on(self) -> bool:
        return self._ours is not None

    def use_key(self, server_key: bytes) -> None:
        self._server_key = server_key

    def record(self, frame: bytes) -> None:
        """One handshake frame, sent or received, for the keys' salt."""
        self._handshake.update(frame)

    def start(self) -> None:
        """WELCOME has passed and both ends asked for tags: every later unit carries one."""
        if self._server_key is None:
            raise LocalProtocolError("frame authentication negotiated without use_frame_key")
        keys = auth.frame_keys(self._server_key, self._handshake.digest())
        ours, theirs = keys.sender_to_receiver, keys.receiver_to_sender
        if not self._sender_side:
            ours, theirs = theirs, ours
        self._ours, self._theirs = _Direction(ours), _Direction(theirs)

    def seal(self, frame: bytes) -> bytes:
        """The tag of a frame this end sends."""
        mac = self.next_outgoing()
        mac.update(frame)
        return mac.digest()

    def next_outgoing(self) -> hashlib.blake2b:
        """The tag of the next unit (frame or segment) this end sends, to be fed its bytes."""
        assert self._ours is not None  # only once started
        return self._ours.begin()

    def next_incoming(self) -> hashlib.blake2b:
        """The tag the peer's next unit must carry, to be fed its bytes."""
        assert self._theirs is not None  # only once started
        return self._theirs.begin()

    def check(self, name: str, frame: bytes, tag: bytes) -> None:
        """Raise FrameAuthError unless `tag` is the peer's tag of `frame` (named `name`)."""
        assert self._theirs is not None  # only once started
        sequence = self._theirs.sequence
        mac = self._theirs.begin()
        mac.update(frame)
        if not hmac.compare_digest(mac.digest(), tag):
            raise FrameAuthError(
                f"frame authentication failed: {name} frame number {sequence} was altered, "
                "injected, replayed or reordered on the way"
            )


def segments(length: int) -> int:
    """How many tags a payload of `length` bytes carries: an empty one has one too."""
    return max(1, -(-length // SEGMENT))


def check_segment(file_id: int, offset: int, mac: hashlib.blake2b, tag: bytes) -> None:
    """Raise FrameAuthError unless `tag` ends the segment `mac` was fed."""
    if not hmac.compare_digest(mac.digest(), tag):
        raise FrameAuthError(
            f"frame authentication failed: the payload of file {file_id} was altered on the "
            f"way (the {SEGMENT}-byte segment at payload byte {offset})"
        )
