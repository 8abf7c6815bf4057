"""The sender against a scripted receiver, for moments a real receiver cannot be made to hit."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

import xxhash

from scanxfer import protocol as p
from scanxfer.keys import KEYS_FILE_NAME, Keyring
from scanxfer.protocol import auth
from scanxfer.tls import load_identity, server_context

from .harness import (
    TEST_SENDER,
    ReceiverProcess,
    credentials,
    send_once_in_background,
    sender_config,
    start_sender,
    wait_for_files,
    write_big_scan,
    write_scan,
)


class ScriptedReceiver:
    """Speaks the receiver's side by hand: TLS and handshake, then whatever the test says."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(60)
        identity = load_identity(credentials().source)
        self.context = server_context(identity)
        self.channel = bytes.fromhex(identity.fingerprint)
        entry = Keyring(credentials().source / KEYS_FILE_NAME).lookup(TEST_SENDER)
        assert entry is not None
        self.record = entry.verifier

    def accept(
        self, cancel: bool = True, ask_digest: bool = False, tls: bool = True
    ) -> tuple[socket.socket, p.Connection]:
        """Take a connection through the handshake; `cancel`, `ask_digest`: echo that option
        (a receiver from before ASK_DIGEST does not echo it); without `tls`, plain TCP as a
        receiver from before frame authentication speaks it (no `frame_auth` echoed)."""
        plain, _ = self.listener.accept()
        plain.settimeout(60)
        sock = self.context.wrap_socket(plain, server_side=True) if tls else plain
        conn = p.Connection(p.Role.RECEIVER)
        hello = next_event(sock, conn)
        assert isinstance(hello, p.Hello)
        nonce = auth.new_nonce()
        sock.sendall(conn.send(p.Challenge(1, nonce)))
        answer = next_event(sock, conn)
        assert isinstance(answer, p.Authenticate)
        channel = self.channel if tls else b""
        signed = auth.transcript(1, hello.name, nonce, answer.nonce, channel)
        assert auth.check_client_proof(self.record, signed, answer.proof)
        assert hello.options.get(p.ASK_DIGEST_OPTION) == p.ASK_DIGEST_ON  # the sender asks
        options = {p.CANCEL_OPTION: p.CANCEL_ON} if cancel else {}
        if ask_digest:
            options[p.ASK_DIGEST_OPTION] = p.ASK_DIGEST_ON
        proof = auth.server_proof(self.record, signed)
        sock.sendall(conn.send(p.Welcome("scripted", 8, proof, options=options)))
        return sock, conn


def next_event(sock: socket.socket, conn: p.Connection) -> p.Event:
    while (event := conn.next_event()) is p.NEED_DATA:
        conn.receive_data(sock.recv(65536))
    return event


def test_a_file_deleted_between_offer_and_ready_is_withdrawn(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scan = write_scan(scans / "doomed.npy", (8, 8), seed=1)
    receiver = ScriptedReceiver()
    sender = send_once_in_background(sender_config(tmp_path / "s.yaml", receiver.port, scans))
    sock, conn = receiver.accept()
    offer = next_event(sock, conn)
    assert isinstance(offer, p.Offer) and offer.path == "doomed.npy"
    scan.unlink()
    sock.sendall(conn.send(p.Ready(offer.file_id, 0)))
    # Not a byte of it: the sender withdraws the file, and the connection goes on.
    assert next_event(sock, conn) == p.Cancel(offer.file_id)
    assert isinstance(next_event(sock, conn), p.Bye)
    sock.close()
    assert sender.wait(60) == 0, sender.log
    assert "doomed.npy was removed while being sent" in sender.log
    assert "1 files were not complete, so not sent; run again once they are: doomed.npy" in (
        sender.log
    )


def test_a_file_deleted_after_its_offer_is_sent_as_offered_to_an_old_receiver(
    tmp_path: Path,
) -> None:
    """A receiver that knows no CANCEL gets the bytes the OFFER's digest was taken from."""
    scans = tmp_path / "scans"
    scan = write_scan(scans / "doomed.npy", (8, 8), seed=1)
    original = scan.read_bytes()
    receiver = ScriptedReceiver()
    sender = send_once_in_background(sender_config(tmp_path / "s.yaml", receiver.port, scans))
    sock, conn = receiver.accept(cancel=False)
    offer = next_event(sock, conn)
    assert isinstance(offer, p.Offer)
    scan.unlink()
    sock.sendall(conn.send(p.Ready(offer.file_id, 0)))
    assert isinstance(next_event(sock, conn), p.DataHeader)
    payload = b""
    while not isinstance(event := next_event(sock, conn), p.DataEnd):
        assert isinstance(event, p.DataChunk)
        payload += bytes(event.data)
    assert payload == original
    sock.sendall(conn.send(p.Ack(offer.file_id, p.Outcome.STORED, "doomed.npy")))
    assert isinstance(next_event(sock, conn), p.Bye)
    sock.close()
    assert sender.wait(60) == 0, sender.log


def test_an_ack_that_arrives_with_the_end_of_the_connection_counts(tmp_path: Path) -> None:
    """A receiver shutting down ACKs the file it finished and ends the connection at once."""
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (8, 8), seed=1)
    receiver = ScriptedReceiver()
    sender = send_once_in_background(sender_config(tmp_path / "s.yaml", receiver.port, scans))
    sock, conn = receiver.accept()
    offer = next_event(sock, conn)
    assert isinstance(offer, p.Offer)
    sock.sendall(conn.send(p.Ready(offer.file_id, 0)))
    assert isinstance(next_event(sock, conn), p.DataHeader)
    while not isinstance(next_event(sock, conn), p.DataEnd):
        pass
    # One write, so the sender reads the ACK and the end of the connection together.
    ack = conn.send(p.Ack(offer.file_id, p.Outcome.STORED, "a.npy"))
    sock.sendall(ack + conn.send(p.Error(p.ErrorCode.SHUTTING_DOWN, "stopping")))
    sock.close()
    assert sender.wait(60) == 0, sender.log
    assert "all 1 files delivered and stored durably" in sender.log


def test_a_receiver_that_never_answers_the_handshake_is_left(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (8, 8), seed=1)
    silent = socket.create_server(("127.0.0.1", 0))
    config = sender_config(
        tmp_path / "s.yaml", silent.getsockname()[1], scans, stall_timeout="0.5s"
    )
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def accept_and_ignore() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_and_ignore, daemon=True)
    thread.start()
    sender = send_once_in_background(config)
    try:
        assert sender.wait(120) == 3, sender.log
    finally:
        stop.set()
        thread.join()
    assert "did not answer the handshake" in sender.log
    assert len(accepted) >= 2  # it retried before giving up


def test_sighup_makes_the_daemon_watch_with_its_new_settings(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_scan(first / "a.npy", (8, 8), seed=1)
    config = sender_config(tmp_path / "s.yaml", receiver.port, first)
    sender = start_sender(config)
    try:
        wait_for_files(receiver, ["a.npy"], sender)
        sender_config(tmp_path / "s.yaml", receiver.port, second)
        write_scan(second / "b.npy", (8, 8), seed=2)
        sender.process.send_signal(signal.SIGHUP)
        sender.wait_for("settings reloaded", 60)
        wait_for_files(receiver, ["a.npy", "b.npy"], sender)
        sender.wait_for(f"watching {second}", 60)
    finally:
        assert sender.stop() == 0, sender.log


def payload_of(sock: socket.socket, conn: p.Connection) -> bytes:
    """The DATA header and payload of the one file whose DATA comes next."""
    assert isinstance(next_event(sock, conn), p.DataHeader)
    payload = bytearray()
    while not isinstance(event := next_event(sock, conn), p.DataEnd):
        assert isinstance(event, p.DataChunk)
        payload += event.data
    return bytes(payload)


def test_a_big_scans_digest_asked_for_goes_before_any_data(tmp_path: Path) -> None:
    """A receiver that may hold the file asks; a duplicate then costs no payload at all."""
    scans = tmp_path / "scans"
    big = write_big_scan(scans / "volume.npy", 9)  # offered with a deferred digest
    receiver = ScriptedReceiver()
    sender = send_once_in_background(sender_config(tmp_path / "s.yaml", receiver.port, scans))
    sock, conn = receiver.accept(ask_digest=True)
    offer = next_event(sock, conn)
    assert isinstance(offer, p.Offer) and offer.digest == p.DEFERRED_DIGEST
    sock.sendall(conn.send(p.AskDigest(offer.file_id)))
    expected = xxhash.xxh3_128_digest(big.read_bytes())
    assert next_event(sock, conn) == p.Digest(offer.file_id, expected)
    sock.sendall(conn.send(p.Ack(offer.file_id, p.Outcome.DUPLICATE, "volume.npy")))
    assert isinstance(next_event(sock, conn), p.Bye)
    sock.close()
    assert sender.wait(60) == 0, sender.log
    assert "volume.npy: the receiver may hold it already; told it the digest first" in sender.log


def test_after_an_early_digest_the_data_needs_no_digest_behind_it(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    big = write_big_scan(scans / "volume.npy", 9)
    receiver = ScriptedReceiver()
    sender = send_once_in_background(sender_config(tmp_path / "s.yaml", receiver.port, scans))
    sock, conn = receiver.accept(ask_digest=True)
    offer = next_event(sock, conn)
    assert isinstance(offer, p.Offer)
    sock.sendall(conn.send(p.AskDigest(offer.file_id)))
    assert isinstance(next_event(sock, conn), p.Digest)
    sock.sendall(conn.send(p.Ready(offer.file_id, 1024)))  # it held a part
    assert payload_of(sock, conn) == big.read_bytes()[1024:]
    # The answer is due now; our Connection would refuse a DIGEST here as a protocol error.
    sock.sendall(conn.send(p.Ack(offer.file_id, p.Outcome.STORED, "volume.npy")))
    assert isinstance(next_event(sock, conn), p.Bye)
    sock.close()
    assert sender.wait(60) == 0, sender.log


def test_a_receiver_without_ask_digest_gets_the_digest_after_the_data(tmp_path: Path) -> None:
    """A receiver from before the option: the sender behaves exactly as it did then."""
    scans = tmp_path / "scans"
    big = write_big_scan(scans / "volume.npy", 9)
    receiver = ScriptedReceiver()
    sender = send_once_in_background(sender_config(tmp_path / "s.yaml", receiver.port, scans))
    sock, conn = receiver.accept(ask_digest=False)
    assert not conn.can_ask_digest
    offer = next_event(sock, conn)
    assert isinstance(offer, p.Offer) and offer.digest == p.DEFERRED_DIGEST
    sock.sendall(conn.send(p.Ready(offer.file_id, 0)))
    assert payload_of(sock, conn) == big.read_bytes()
    expected = xxhash.xxh3_128_digest(big.read_bytes())
    assert next_event(sock, conn) == p.Digest(offer.file_id, expected)
    sock.sendall(conn.send(p.Ack(offer.file_id, p.Outcome.DUPLICATE, "volume.npy")))
    assert isinstance(next_event(sock, conn), p.Bye)
    sock.close()
    assert sender.wait(60) == 0, sender.log


def test_a_plain_receiver_that_cannot_authenticate_frames_gets_no_offer(tmp_path: Path) -> None:
    """With tls: false, frames without tags could be forged: the sender asks for them, and a
    receiver that does not grant them is told to upgrade, before anything is offered."""
    write_scan(tmp_path / "scans" / "scan.npy", (8, 8), seed=1)
    receiver = ScriptedReceiver()
    config = sender_config(tmp_path / "s.yaml", receiver.port, tmp_path / "scans", tls="false")
    sender = send_once_in_background(config)
    sock, conn = receiver.accept(tls=False)
    assert isinstance(next_event(sock, conn), p.ConnectionClosed)  # no OFFER, not even a BYE
    sock.close()
    assert sender.wait(60) != 0, sender.log
    assert "cannot authenticate frames" in sender.log
    assert "upgrade scanxfer on the receiver" in sender.log
