"""A man in the middle of plain-TCP scanxfer connections, frame by frame.

`faultproxy` breaks bytes at offsets; this relay knows the frame layout of docs/protocol.md
(a tag after every frame once the handshake is over, and after each segment of a DATA
payload), so a test can change one field of one frame, as an attacker who reads the plain
protocol would: flip the retryable bit of a NACK, rename an OFFER's file, or slip a forged
frame in after relaying a real handshake.  Only the first connection is tampered with;
later ones pass clean, so the sender's retry shows what it recorded meanwhile.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass

from scanxfer import protocol as p
from scanxfer.protocol.frames import FRAME_HEAD
from scanxfer.protocol.integrity import segments

UPSTREAM, DOWNSTREAM = "sender -> receiver", "receiver -> sender"
HANDSHAKE_FRAMES = 2  # each way: HELLO and AUTHENTICATE, CHALLENGE and WELCOME; untagged
_PAYLOAD_LENGTH = struct.Struct(">Q")  # DATA body offset 12


@dataclass(frozen=True)
class Flip:
    """XOR `mask` into byte `offset` of the body of the first `kind` frame going `direction`."""

    direction: str
    kind: p.FrameType
    offset: int
    mask: int = 0x01


@dataclass(frozen=True)
class Inject:
    """Send `frame` upstream just before the sender's first frame after the handshake."""

    frame: bytes


Attack = Flip | Inject


class _Direction:
    """One way of one connection: cuts the byte stream into frames and forwards them."""

    def __init__(
        self, name: str, source: socket.socket, sink: socket.socket, attack: Attack | None
    ) -> None:
        self.name, self.source, self.sink, self.attack = name, source, sink, attack
        self.pending = bytearray()
        self.frames = 0
        self.passthrough = 0  # payload and payload tag still to forward untouched
        self.done = threading.Event()  # the attack was carried out

    def pump(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.source.recv(1 << 16):
                self.pending += chunk
                while (unit := self._next_unit()) is not None:
                    self.sink.sendall(unit)
        for sock in (self.sink, self.source):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _next_unit(self) -> bytes | None:
        if self.passthrough:
            unit = bytes(self.pending[: self.passthrough])
            del self.pending[: len(unit)]
            self.passthrough -= len(unit)
            return unit or None
        if len(self.pending) < FRAME_HEAD.size:
            return None
        kind, length = FRAME_HEAD.unpack_from(self.pending)
        tagged = self.frames >= HANDSHAKE_FRAMES
        size = FRAME_HEAD.size + length + (p.TAG_SIZE if tagged else 0)
        if len(self.pending) < size:
            return None
        frame = bytearray(self.pending[:size])
        del self.pending[:size]
        self.frames += 1
        if tagged and kind == p.FrameType.DATA:
            (payload,) = _PAYLOAD_LENGTH.unpack_from(frame, FRAME_HEAD.size + 12)
            self.passthrough = payload + segments(payload) * p.TAG_SIZE
        return self._tamper(kind, frame, tagged)

    def _tamper(self, kind: int, frame: bytearray, tagged: bool) -> bytes:
        attack = self.attack
        if attack is None or self.done.is_set() or not tagged:
            return bytes(frame)
        if isinstance(attack, Inject) and self.name == UPSTREAM:
            self.done.set()
            return attack.frame + bytes(frame)
        if isinstance(attack, Flip) and attack.direction == self.name and kind == attack.kind:
            frame[FRAME_HEAD.size + attack.offset] ^= attack.mask
            self.done.set()
        return bytes(frame)


class TamperingRelay:
    """Listen on 127.0.0.1 and relay to `target_port`; the first connection gets `attack`."""

    def __init__(self, target_port: int, attack: Attack) -> None:
        self.target = ("127.0.0.1", target_port)
        self.attack: Attack | None = attack
        self.directions: list[_Direction] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def tampered(self) -> bool:
        return any(direction.done.is_set() for direction in self.directions)

    def close(self) -> None:
        self._listener.close()
        for direction in self.directions:
            with contextlib.suppress(OSError):
                direction.source.close()

    def _accept_loop(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
                attack, self.attack = self.attack, None  # later connections pass clean
                self.connections += 1
                for name, source, sink in (
                    (UPSTREAM, client, server),
                    (DOWNSTREAM, server, client),
                ):
                    direction = _Direction(name, source, sink, attack)
                    self.directions.append(direction)
                    threading.Thread(target=direction.pump, daemon=True).start()
