"""Frame authentication for plain TCP (`tls: false`): a tag after every frame and payload.

TLS authenticates every record, so with TLS nothing here is used.  Without it, each end
seals what it sends with the key of its direction (`auth.frame_keys`) and a sequence number
that both ends count, starting at 0 after WELCOME: one number per frame, one per DATA
payload.  A frame that was altered, injected, replayed, reordered or left out fails its
tag, because its bytes or the number it was sealed under differ from what the peer expects.

The tag is keyed BLAKE2b cut to TAG_SIZE bytes over the sequence number (u64 big-endian)
and the bytes: keyed BLAKE2b is a MAC by design (no HMAC construction needed), and in
software, as on a Raspberry Pi 4 without SHA-256 instructions, it runs faster than SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

TAG_SIZE = 16
_SEQUENCE = struct.Struct(">Q")


class FrameMac:
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

    def tag(self, data: bytes) -> bytes:
        """The tag of the next frame, whose bytes are `data`."""
        mac = self.begin()
        mac.update(data)
        return mac.digest()


def tag_matches(mac: hashlib.blake2b, tag: bytes | memoryview) -> bool:
    """Whether `tag` is the tag `mac` computes, compared in constant time."""
    return hmac.compare_digest(mac.digest(), bytes(tag))
