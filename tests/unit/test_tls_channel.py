"""The receiver's TLS channel over a real socket pair: records split across reads, many
records gathered in one read, the end of the connection, and a deadline a trickle cannot
stretch."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from scanxfer.receiver.tls_channel import TLSChannel
from scanxfer.tls import client_context, ensure_identity, server_context


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
