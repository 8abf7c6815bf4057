"""A hand-driven protocol client, for what the real sender would never do.

It speaks through the same `protocol.Connection` and `protocol.auth` as the sender, but
every step is separate, so tests can stop half-way, lie about a key, replay a recorded
handshake or offer paths the sender would refuse to send.  Beside it: `connect` (from any
loopback address), `read_frames`, `trickle` (a slowloris), and `GoodSender`, a well-behaved
client storing files in the background while a test attacks the receiver.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import ssl
import threading

import xxhash

from scanxfer import protocol as p
from scanxfer.protocol import auth
from scanxfer.protocol.frames import FRAME_HEAD
from scanxfer.tls import client_context, peer_fingerprint

from .harness import GIVE_UP_SECONDS, TEST_SENDER, ReceiverProcess, credentials, wait_until

FRAME_AUTH = {p.FRAME_AUTH_OPTION: p.FRAME_AUTH_ON}


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
        source: str = "127.0.0.1",
        options: dict[str, bytes] | None = None,
    ) -> None:
        sock = connect(port, source)
        self.address = address_of(sock)
        self.channel = b""
        if tls:
            sock = client_context().wrap_socket(sock)
            assert isinstance(sock, ssl.SSLSocket)
            self.channel = bytes.fromhex(peer_fingerprint(sock))
        self.sock = sock
        self.name = name
        self.secret = auth.decode_secret(secret or credentials().secret)
        self.conn = p.Connection(p.Role.SENDER)
        # For the HELLO; on plain TCP, like the real sender, it authenticates its frames.
        self.options = (options or {}) if tls else {**FRAME_AUTH, **(options or {})}
        self.conn.use_frame_key(auth.verifier(self.secret).server_key)
        self.ids = iter(range(1, 10**6))
        self.sent = bytearray()  # every byte this client wrote, for replay tests
        if authenticate:
            welcome = self.handshake()
            assert isinstance(welcome, p.Welcome), welcome

    def send(self, event: p.Event, payload: bytes = b"") -> None:
        self.send_raw(self.conn.send(event) + payload)

    def next_event(self) -> p.Event:
        while (event := self.conn.next_event()) is p.NEED_DATA:
            self.conn.receive_data(self.sock.recv(65536))
        return event

    def handshake(self) -> p.Event:
        """HELLO, answer the challenge; the receiver's last word (Welcome or Error)."""
        self.send(p.Hello(self.name, options=self.options))
        challenge = self.next_event()
        if not isinstance(challenge, p.Challenge):
            return challenge
        nonce = auth.new_nonce()
        signed = auth.transcript(challenge.version, self.name, challenge.nonce, nonce, self.channel)
        self.send(p.Authenticate(nonce, auth.client_proof(self.secret, signed)))
        return self.next_event()

    def send_file(self, path: str, payload: bytes) -> p.Ack | p.Nack:
        """Offer, stream if asked, and return the final answer."""
        self.offer(path, payload)
        answer = self.next_event()
        if isinstance(answer, p.Ready):
            self.stream(answer, payload)
            answer = self.next_event()
        assert isinstance(answer, p.Ack | p.Nack), answer
        return answer

    def offer(self, path: str, payload: bytes, *, deferred: bool = False) -> int:
        """Offer `payload` as `path`, with its digest or (`deferred`) without; its file id."""
        file_id = next(self.ids)
        digest = p.DEFERRED_DIGEST if deferred else xxhash.xxh3_128(payload).digest()
        self.send(p.Offer(file_id, path, len(payload), 0, digest))
        return file_id

    def stream(self, ready: p.Ready, payload: bytes) -> None:
        """The DATA that `ready` asks for: the rest of `payload` from its offset."""
        self.send(p.DataHeader(ready.file_id, ready.offset, len(payload) - ready.offset))
        self.send_raw(self.conn.send_payload(payload[ready.offset :]))

    def send_raw(self, data: bytes) -> None:
        """Bytes the state machine does not see: payload, or a frame it would refuse to send."""
        self.sent += data
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A plain TCP connection to the receiver on loopback, from `source`.

    Any 127.x.y.z works as a source on Linux; the receiver then sees distinct peers, so a
    client that trips the brake on failed handshakes does not lock out the good ones.
    """
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


def address_of(sock: socket.socket) -> str:
    """This end of `sock` as the receiver's log names its peer: HOST:PORT."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def read_frames(sock: socket.socket) -> list[p.Event]:
    """Every control frame the receiver sends until it closes (or resets) the connection.

    A timeout is not a close: it propagates, so a connection left open fails the test.
    """
    data = bytearray()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while chunk := sock.recv(65536):
            data += chunk
    return frames_in(data)


def frames_in(raw: bytes) -> list[p.Event]:
    """The receiver's control frames in `raw`, decoded one by one."""
    data = bytearray(raw)
    events: list[p.Event] = []
    while len(data) >= FRAME_HEAD.size:
        kind, length = FRAME_HEAD.unpack_from(data)
        body = bytes(data[FRAME_HEAD.size : FRAME_HEAD.size + length])
        events.append(p.decode_body(p.FrameType(kind), body))
        del data[: FRAME_HEAD.size + length]
    return events


def trickle(sock: socket.socket, data: bytes, interval: float = 0.5) -> tuple[int, bytes]:
    """Send `data` one byte every `interval` s until the peer hangs up: a slowloris.

    Returns how many bytes went out before the connection ended, and what came back.
    """
    sock.settimeout(interval)
    received = bytearray()
    for sent in range(len(data)):
        try:
            sock.sendall(data[sent : sent + 1])
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return sent, bytes(received)
        if not chunk:
            return sent, bytes(received)
        received += chunk
    return len(data), bytes(received)


class GoodSender:
    """An authenticated connection storing small files one after another, in a thread.

    Started before bad clients arrive, it shows that the receiver keeps serving its
    senders while refusing them.  It offers good/NNNN.npy; `sent` maps where each was
    stored (under the sender's directory with per_sender_dirs) to its bytes.
    """

    def __init__(
        self,
        port: int,
        *,
        source: str = "127.0.0.3",
        tls: bool = True,
        name: str = TEST_SENDER,
        secret: str | None = None,
    ) -> None:
        self.client = RawSender(port, name=name, secret=secret, tls=tls, source=source)
        self.sent: dict[str, bytes] = {}
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for index in itertools.count():
                if self._stop.wait(0.05):
                    return
                path, payload = f"good/{index:04}.npy", os.urandom(4096 + index)
                answer = self.client.send_file(path, payload)
                if not isinstance(answer, p.Ack) or answer.outcome is not p.Outcome.STORED:
                    raise AssertionError(f"the good sender's {path} was answered {answer}")
                with self._lock:
                    self.sent[answer.stored_path] = payload
        except BaseException as error:  # reported by keeps_serving() and finish()
            self.failure = error

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.sent)

    def keeps_serving(self, receiver: ReceiverProcess) -> None:
        """Return once two more files were stored: the receiver serves this connection now."""
        target = self.count + 2
        wait_until(
            lambda: self.count >= target or self.failure is not None,
            "the good sender's next files",
            receiver.child,
        )
        assert self.failure is None, f"the good sender failed: {self.failure!r}\n{receiver.log}"

    def finish(self, receiver: ReceiverProcess) -> None:
        """Stop, say goodbye, and check every file it sent is stored intact."""
        self.keeps_serving(receiver)
        self._stop.set()
        self._thread.join(GIVE_UP_SECONDS)
        assert self.failure is None, f"the good sender failed: {self.failure!r}\n{receiver.log}"
        self.client.send(p.Bye())
        self.client.close()
        for path, payload in self.sent.items():
            assert (receiver.incoming / path).read_bytes() == payload, path
