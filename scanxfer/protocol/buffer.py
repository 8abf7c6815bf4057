"""Bytes received but not yet parsed, after h11's ReceiveBuffer.

The pieces are views of the caller's receive buffers, not copies: payload goes from the
socket's buffer to the file without another copy.  Only what is left of an unfinished
frame is copied out (`own`), before the caller reuses its buffer.
"""

from __future__ import annotations

from collections import deque


class ReceiveBuffer:
    def __init__(self) -> None:
        self._pieces: deque[memoryview] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._pieces.append(view)
        self._size += len(view)

    def peek(self, size: int) -> bytes:
        """The first `size` bytes (fewer if fewer are here), left in place."""
        out = bytearray()
        for piece in self._pieces:
            out += piece[: size - len(out)]
            if len(out) == size:
                break
        return bytes(out)

    def take(self, size: int) -> bytes:
        """Remove and return the first `size` bytes; the caller checked that they are here."""
        out = bytearray()
        while len(out) < size:
            piece = self._pieces[0]
            need = size - len(out)
            out += piece[:need]
            if len(piece) > need:
                self._pieces[0] = piece[need:]
            else:
                self._pieces.popleft()
        self._size -= size
        return bytes(out)

    def take_view(self, limit: int) -> memoryview:
        """Remove and return up to `limit` bytes of the first piece, uncopied; empty if none."""
        if not self._pieces:
            return memoryview(b"")
        piece = self._pieces[0]
        if len(piece) > limit:
            self._pieces[0] = piece[limit:]
            piece = piece[:limit]
        else:
            self._pieces.popleft()
        self._size -= len(piece)
        return piece

    def own(self) -> None:
        """Copy what is left out of the caller's buffers, before the caller reuses them."""
        if self._pieces:
            rest = memoryview(self.take(self._size))
            self._pieces.append(rest)
            self._size = len(rest)
