"""A hand-driven protocol client, for what the real sender would never do.

It speaks through the same `protocol.Connection` and `protocol.auth` as the sender, but
every step is separate, so tests can stop half-way, lie about a key, replay a recorded
handshake or offer paths the sender would refuse to send.
"""

from __future__ import annotations

import socket
import ssl

import xxhash

from scanxfer import protocol as p
from scanxfer.protocol import auth
from scanxfer.tls import client_context, peer_fingerprint

from .harness import TEST_SENDER, credentials


class RawSender:
    """One connection; `RawSender(port)` is already authenticated with the test key."""

    def __init__(
        self,
        port: int,
        *,
        name: str = TEST_SENDER,
        secret: str | None = None,
        tls: bool = True,
        authenticate: bool = True,
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.channel = b""
        if tls:
            sock = client_context().wrap_socket(sock)
            assert isinstance(sock, ssl.SSLSocket)
            self.channel = bytes.fromhex(peer_fingerprint(sock))
        self.sock = sock
        self.name = name
        self.secret = auth.decode_secret(secret or credentials().secret)
        self.conn = p.Connection(p.Role.SENDER)
        self.ids = iter(range(1, 10**6))
        self.sent = bytearray()  # every byte this client wrote, for replay tests
        if authenticate:
            welcome = self.handshake()
            assert isinstance(welcome, p.Welcome), welcome

    def send(self, event: p.Event, payload: bytes = b"") -> None:
        data = self.conn.send(event) + payload
        self.sent += data
        self.sock.sendall(data)

    def next_event(self) -> p.Event:
        while (event := self.conn.next_event()) is p.NEED_DATA:
            self.conn.receive_data(self.sock.recv(65536))
        return event

    def handshake(self) -> p.Event:
        """HELLO, answer the challenge; the receiver's last word (Welcome or Error)."""
        self.send(p.Hello(self.name))
        challenge = self.next_event()
        if not isinstance(challenge, p.Challenge):
            return challenge
        nonce = auth.new_nonce()
        signed = auth.transcript(challenge.version, self.name, challenge.nonce, nonce, self.channel)
        self.send(p.Authenticate(nonce, auth.client_proof(self.secret, signed)))
        return self.next_event()

    def send_file(self, path: str, payload: bytes) -> p.Ack | p.Nack:
        """Offer, stream if asked, and return the final answer."""
        file_id = next(self.ids)
        digest = xxhash.xxh3_128(payload).digest()
        self.send(p.Offer(file_id, path, len(payload), 0, digest))
        answer = self.next_event()
        if isinstance(answer, p.Ready):
            header = p.DataHeader(file_id, answer.offset, len(payload) - answer.offset)
            self.send(header, payload[answer.offset :])
            answer = self.next_event()
        assert isinstance(answer, p.Ack | p.Nack), answer
        return answer

    def close(self) -> None:
        self.sock.close()
