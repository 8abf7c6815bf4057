"""The TLS channel over a real socket pair.  The receiver's side: records split across reads,
many records gathered in one read, the end of the connection, and a deadline a trickle cannot
stretch.  The sender's side: the pinned certificate and the pulse during the handshake, all
the records of one sendall in one send, and records already read that select cannot see."""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from scanxfer.tls import (
    ReceiverIdentity,
    client_context,
    ensure_identity,
    peer_fingerprint,
    server_context,
)
from scanxfer.tls_channel import TLSChannel


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    return server_context(ensure_identity(tmp_path_factory.mktemp("tls"), "test receiver"))


class Client:
    """A TLS client on the far end of a socket pair that writes its TLS bytes as it likes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context().wrap_bio(self.incoming, self.outgoing)

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))
        self.sock.sendall(self.outgoing.read())

    def records(self, data: bytes) -> bytes:
        """`data` as the TLS bytes on the wire, not yet sent."""
        self.tls.write(data)
        return self.outgoing.read()


@pytest.fixture
def pair(server_tls: ssl.SSLContext) -> Iterator[tuple[TLSChannel, Client]]:
    a, b = socket.socketpair()
    channel, client = TLSChannel(a, server_tls), Client(b)
    channel.settimeout(30)  # a give-up bound only
    handshake = threading.Thread(target=channel.do_handshake)
    handshake.start()
    client.handshake()
    handshake.join()
    yield channel, client
    a.close()
    b.close()


def received(channel: TLSChannel) -> tuple[bytes, int]:
    """Everything until the end of the connection, and the number of reads that gave data."""
    data, reads, buffer = bytearray(), 0, bytearray(1 << 20)
    while count := channel.recv_into(buffer):
        data += buffer[:count]
        reads += 1
    return bytes(data), reads


def test_records_split_into_single_bytes_arrive_whole(pair: tuple[TLSChannel, Client]) -> None:
    channel, client = pair
    payload = bytes(range(256)) * 100
    wire = client.records(payload)

    def trickle() -> None:
        for index in range(len(wire)):
            client.sock.send(wire[index : index + 1])
        client.sock.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=trickle)
    writer.start()
    data, _ = received(channel)
    writer.join()
    assert data == payload


def test_records_that_arrived_together_come_out_in_one_read(
    pair: tuple[TLSChannel, Client],
) -> None:
    channel, client = pair
    payload = bytes(range(256)) * 512  # 8 records of 16 KiB: all fit in the socket's buffer
    wire = client.records(payload)
    client.sock.sendall(wire)
    client.sock.shutdown(socket.SHUT_WR)
    data, reads = received(channel)
    assert data == payload and reads == 1  # an SSLSocket gives one record per read: 8


def test_a_trickle_cannot_stretch_the_deadline(pair: tuple[TLSChannel, Client]) -> None:
    channel, client = pair
    wire = client.records(bytes(100))
    stop = threading.Event()

    def trickle() -> None:  # one byte every 0.1 s: never a whole record within the deadline
        for index in range(len(wire) - 1):
            if stop.wait(0.1):
                return
            client.sock.send(wire[index : index + 1])

    writer = threading.Thread(target=trickle)
    writer.start()
    channel.settimeout(0.5)
    try:
        with pytest.raises(TimeoutError):
            channel.recv_into(bytearray(1024))
    finally:
        stop.set()
        writer.join()


def test_the_way_out_works_after_the_way_in_is_shut(pair: tuple[TLSChannel, Client]) -> None:
    channel, client = pair
    channel.plain.shutdown(socket.SHUT_RD)  # what a stopping receiver does from another thread
    assert channel.recv_into(bytearray(1024)) == 0
    channel.sendall(b"goodbye")
    client.incoming.write(client.sock.recv(65536))
    assert client.tls.read(1024) == b"goodbye"


class CountingSocket(socket.socket):
    """A real socket that counts the sendall calls made on it."""

    sends = 0

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:  # type: ignore[override]
        self.sends += 1
        super().sendall(data, flags)


@pytest.fixture
def client_pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TLSChannel, ssl.SSLSocket, str]]:
    """A sender's channel and the receiver's SSLSocket, joined; and the receiver's fingerprint."""
    identity = ensure_identity(tmp_path_factory.mktemp("tls"), "test receiver")
    a, b = socket.socketpair()
    counted = CountingSocket(fileno=a.detach())
    channel = TLSChannel(counted, client_context(), server_side=False)
    channel.settimeout(30)
    server = server_context(identity).wrap_socket(
        b, server_side=True, do_handshake_on_connect=False
    )
    handshake = threading.Thread(target=server.do_handshake)
    handshake.start()
    channel.do_handshake()
    handshake.join()
    yield channel, server, identity.fingerprint
    counted.close()
    server.close()


def receiving_end(identity: ReceiverIdentity, sock: socket.socket) -> ssl.SSLSocket:
    return server_context(identity).wrap_socket(
        sock, server_side=True, do_handshake_on_connect=False
    )


def test_a_sender_sees_the_receivers_certificate_and_cipher(
    client_pair: tuple[TLSChannel, ssl.SSLSocket, str],
) -> None:
    channel, server, fingerprint = client_pair
    assert peer_fingerprint(channel) == fingerprint
    assert channel.cipher() == server.cipher()


def test_all_the_records_of_one_sendall_leave_in_one_send(
    client_pair: tuple[TLSChannel, ssl.SSLSocket, str],
) -> None:
    channel, server, _ = client_pair
    assert isinstance(channel.plain, CountingSocket)
    before = channel.plain.sends
    payload = bytes(range(256)) * 1024  # 16 records of 16 KiB
    reader = threading.Thread(target=lambda: got.extend(read_exactly(server, len(payload))))
    got = bytearray()
    reader.start()
    channel.sendall(payload)
    reader.join()
    assert bytes(got) == payload
    assert channel.plain.sends - before == 1  # an SSLSocket makes a write per record: 16


def read_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += sock.recv(size - len(data))
    return bytes(data)


def test_records_read_with_an_earlier_one_are_pending_though_select_sees_nothing(
    client_pair: tuple[TLSChannel, ssl.SSLSocket, str],
) -> None:
    channel, server, _ = client_pair
    server.sendall(b"first")
    server.sendall(b"second")  # its own record, in the kernel's buffer with the first
    assert channel.recv(5) == b"first"  # one read of the socket took both records
    assert select.select([channel], [], [], 0)[0] == []
    assert channel.pending() == len(b"second")
    assert channel.recv(100) == b"second"
    assert channel.pending() == 0


def test_the_handshake_calls_the_pulse_while_the_receiver_is_silent(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    identity = ensure_identity(tmp_path_factory.mktemp("tls"), "test receiver")
    a, b = socket.socketpair()
    channel = TLSChannel(a, client_context(), server_side=False)
    server = server_context(identity).wrap_socket(
        b, server_side=True, do_handshake_on_connect=False
    )
    pulses, answer = [], threading.Event()

    def pulse() -> None:
        pulses.append(1)
        if len(pulses) == 3:
            answer.set()  # only now does the receiver take up the handshake

    def take_up() -> None:
        if answer.wait(30):
            server.do_handshake()

    handshake = threading.Thread(target=take_up)
    handshake.start()
    try:
        channel.do_handshake(pulse)
    finally:
        answer.set()
        handshake.join()
        a.close()
        server.close()
    assert len(pulses) >= 3 and channel.cipher() is not None


def test_a_pulse_that_raises_ends_the_handshake(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    a, b = socket.socketpair()
    channel = TLSChannel(a, client_context(), server_side=False)

    def stop() -> None:
        raise InterruptedError("stop requested")

    try:
        with pytest.raises(InterruptedError):
            channel.do_handshake(stop)  # the far end never answers
    finally:
        a.close()
        b.close()
