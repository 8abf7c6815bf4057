"""TLS for one connection, encrypted and decrypted in memory (`ssl.MemoryBIO`), for either end.

Why not `ssl.SSLSocket`: OpenSSL talks to a socket one record at a time.  Reading, it makes
two read() calls per record (its 5-byte header, then up to 16 KiB of body), so a GiB costs
131,072 system calls, and each `recv_into` of Python returns a single record; writing, it
makes a write() per record, 65,536 per GiB.  Here one `recv_into` of the plain socket takes
whatever has arrived, up to RAW_READ bytes, and the records in it are decrypted from memory
in a row; and all the records of one `sendall` leave in one send: about a thousand system
calls per GiB either way.  On a Pi, where a system call costs several times what it costs
on a PC, that is the larger part of what TLS adds besides the cipher itself.

It also keeps the way out working once the way in is shut: the receiver's
`ConnectionHandler.stop` shuts the plain socket for reading to end a blocking read, and the
handler still says SHUTTING_DOWN through TLS afterwards, which an SSLSocket refuses once it
has seen that EOF.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import cast

# What one read of the plain socket may take: as much as is decrypted in a pass.
RAW_READ = 1 << 20
# What `pending` decrypts ahead at most: answers are small frames.
PENDING_READ = 1 << 16
# While a caller's `pulse` waits for the peer, it is called this often.
PULSE_SECONDS = 0.2


class TLSChannel:
    """A TLS connection over `sock`, for one thread at a time.

    Timeouts (`settimeout`) bound a whole call, as an SSLSocket counts them: a peer trickling
    a record a byte at a time must not make each of its bytes a new wait.
    """

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, server_side: bool = True
    ) -> None:
        self.plain = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._raw = bytearray(RAW_READ)
        self._decrypted = bytearray()  # what `pending` decrypted ahead of the next read
        self._ended = False  # the plain socket said end of file
        self._timeout: float | None = sock.gettimeout()

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        """The plain socket's, for select(): it is readable when records arrive."""
        return self.plain.fileno()

    def do_handshake(self, pulse: Callable[[], object] | None = None) -> None:
        """The TLS handshake; ssl.SSLError if the peer speaks no TLS or gives up, TimeoutError
        past the timeout.  `pulse`, if given, is called every PULSE_SECONDS of waiting."""
        deadline = self._deadline()
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_pending()
                if not self._read_plain(deadline, pulse):
                    raise ConnectionResetError(
                        "the other end closed the connection during the TLS handshake"
                    ) from None
        self._send_pending()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._tls.cipher()

    def getpeercert(self, binary_form: bool = False) -> object:
        return self._tls.getpeercert(binary_form)

    def pending(self) -> int:
        """Decrypted bytes ready without reading the socket: records that came in with an
        earlier read, which select() cannot see any more."""
        if not self._decrypted and (self._incoming.pending or self._tls.pending()):
            scratch = bytearray(PENDING_READ)
            count = self._decrypt_into(memoryview(scratch))
            self._decrypted = scratch[:count]
        return len(self._decrypted)

    def recv(self, size: int) -> bytes:
        """Up to `size` decrypted bytes, waiting only while nothing has arrived; b"" at the end."""
        buffer = bytearray(size)
        return bytes(buffer[: self.recv_into(buffer)])

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Decrypted bytes into `buffer`: all that has arrived, waiting only while nothing
        has; 0 once the other end has closed (or the plain socket was shut for reading)."""
        view, deadline = memoryview(buffer), self._deadline()
        if self._decrypted:
            count = min(len(view), len(self._decrypted))
            view[:count] = self._decrypted[:count]
            del self._decrypted[:count]
            return count
        while True:
            count = self._decrypt_into(view)
            if count or self._ended:
                return count
            if not self._read_plain(deadline):
                return 0

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt all of `data`, then send its records together."""
        self._tls.write(data)
        self._send_pending()

    def close(self) -> None:
        self.plain.close()

    def _decrypt_into(self, view: memoryview) -> int:
        count = 0
        try:
            while count < len(view):
                # With a buffer, read() returns a count (typeshed knows only bytes).
                got = cast(int, self._tls.read(len(view) - count, view[count:]))
                if not got:
                    break
                count += got
        except ssl.SSLWantReadError:
            pass  # the rest of a record has not arrived yet
        except ssl.SSLZeroReturnError:
            self._ended = True  # the other end ended TLS cleanly (close_notify)
        return count

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _read_plain(
        self, deadline: float | None, pulse: Callable[[], object] | None = None
    ) -> bool:
        """Feed what the plain socket has to TLS, waiting until `deadline` at most (then
        TimeoutError), with `pulse` between short waits; False at its end of file."""
        if pulse is not None:
            while not select.select([self.plain], [], [], PULSE_SECONDS)[0]:
                pulse()
                _check(deadline)
        self.plain.settimeout(_check(deadline))
        got = self.plain.recv_into(self._raw)
        if not got:
            self._ended = True
            return False
        self._incoming.write(memoryview(self._raw)[:got])
        return True

    def _send_pending(self) -> None:
        pending = self._outgoing.read()
        if pending:
            # A wait of the whole timeout, whatever an earlier read left of its own.
            self.plain.settimeout(self._timeout)
            self.plain.sendall(pending)


def _check(deadline: float | None) -> float | None:
    """The time left until `deadline` (None: no limit); TimeoutError once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left
