"""TLS for one connection, decrypted in memory: the receiver's side of `ssl.MemoryBIO`.

Why not `ssl.SSLSocket`: OpenSSL reads a socket one record at a time, with two read() calls
per record (its 5-byte header, then up to 16 KiB of body), so a GiB costs 131,072 system
calls, and each `recv_into` of Python returns a single record.  Here one `recv_into` of the
plain socket takes whatever has arrived, up to RAW_READ bytes, and the records in it are
decrypted from memory in a row: about a thousand system calls per GiB.  On a Pi, where a
system call costs several times what it costs on a PC, that is the larger part of what TLS
adds besides the cipher itself.

It also keeps the way out working once the way in is shut: `ConnectionHandler.stop` shuts
the plain socket for reading to end a blocking read, and the handler still says
SHUTTING_DOWN through TLS afterwards, which an SSLSocket refuses once it has seen that EOF.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import cast

# What one read of the plain socket may take: as much as the handler decrypts in a pass.
RAW_READ = 1 << 20


class TLSChannel:
    """A server-side TLS connection over `sock`, for one thread (the connection's own)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.plain = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._raw = bytearray(RAW_READ)
        self._ended = False  # the plain socket said end of file
        self._timeout: float | None = sock.gettimeout()

    def settimeout(self, seconds: float | None) -> None:
        """How long a whole `recv_into` or `do_handshake` may wait (TimeoutError after it).

        For the whole call, as an SSLSocket counts it: a peer trickling a record a byte at a
        time must not make each of its bytes a new wait.
        """
        self._timeout = seconds

    def do_handshake(self) -> None:
        """The TLS handshake; ssl.SSLError if the peer speaks no TLS or gives up."""
        deadline = self._deadline()
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_pending()
                if not self._read_plain(deadline):
                    raise ConnectionResetError(
                        "the sender closed the connection during the TLS handshake"
                    ) from None
        self._send_pending()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._tls.cipher()

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Decrypted bytes into `buffer`: all that has arrived, waiting only while nothing
        has; 0 once the sender has closed (or the plain socket was shut for reading)."""
        view, deadline = memoryview(buffer), self._deadline()
        while True:
            count = self._decrypt_into(view)
            if count or self._ended:
                return count
            if not self._read_plain(deadline):
                return 0

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
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
            self._ended = True  # the sender ended TLS cleanly (close_notify)
        return count

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _read_plain(self, deadline: float | None) -> bool:
        """Feed what the plain socket has to TLS, waiting until `deadline` at most (then
        TimeoutError); False at its end of file."""
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise TimeoutError("timed out")
        self.plain.settimeout(timeout)
        got = self.plain.recv_into(self._raw)
        if not got:
            self._ended = True
            return False
        self._incoming.write(memoryview(self._raw)[:got])
        return True

    def _send_pending(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self.plain.sendall(pending)
