"""The prototype's wire format, which both of scanxfer's migration paths speak.

One connection per file: an 8-byte big-endian length, then the file's bytes; no name, no
checksum, no acknowledgement, no authentication.  The receiver's door
(`receiver.prototype_door`) reads it and the sender's prototype transport
(`sender.prototype`) writes it; the layout lives here once so that the two cannot drift.
"""

from __future__ import annotations

import struct

# The length that precedes each file, as the prototype's sender packed it.
LENGTH = struct.Struct(">Q")


def encode_length(size: int) -> bytes:
    """The prefix announcing a file of `size` bytes."""
    return LENGTH.pack(size)


def decode_length(prefix: bytes | bytearray) -> int:
    """The file size announced by an 8-byte prefix."""
    size: int = LENGTH.unpack(prefix)[0]
    return size
