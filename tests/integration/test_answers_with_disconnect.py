"""No answer is lost: answers that arrive in the same read as the end of the connection are
all acted on, and every file ends delivered, none left "sending" in the journal."""

from __future__ import annotations

import socket
from pathlib import Path

from scanxfer import protocol as p

from .harness import send_once_in_background, sender_config, sender_status, write_scan
from .test_sender_session import ScriptedReceiver, next_event


def offers(sock: socket.socket, conn: p.Connection, count: int) -> dict[str, p.Offer]:
    found: dict[str, p.Offer] = {}
    while len(found) < count:
        event = next_event(sock, conn)
        assert isinstance(event, p.Offer), event
        found[event.path] = event
    return found


def store_each(sock: socket.socket, conn: p.Connection, pending: dict[str, p.Offer]) -> None:
    """READY for every offer, then take its bytes and ACK it as stored."""
    for offer in pending.values():
        sock.sendall(conn.send(p.Ready(offer.file_id, 0)))
        assert isinstance(next_event(sock, conn), p.DataHeader)
        while not isinstance(next_event(sock, conn), p.DataEnd):
            pass
        sock.sendall(conn.send(p.Ack(offer.file_id, p.Outcome.STORED, offer.path)))


def test_acks_and_retryable_nacks_read_with_the_disconnect_all_count(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    for index in range(4):
        write_scan(scans / f"s{index}.npy", (8, 8), seed=index)
    receiver = ScriptedReceiver()
    config = sender_config(tmp_path / "s.yaml", receiver.port, scans)
    sender = send_once_in_background(config)

    sock, conn = receiver.accept()
    first = offers(sock, conn, 4)
    answers = [
        p.Ack(first["s0.npy"].file_id, p.Outcome.DUPLICATE, "s0.npy"),
        p.Nack(first["s1.npy"].file_id, p.NackReason.NO_SPACE, True, "full"),
        p.Ack(first["s2.npy"].file_id, p.Outcome.DUPLICATE, "s2.npy"),
        p.Nack(first["s3.npy"].file_id, p.NackReason.NO_SPACE, True, "full"),
    ]
    # One write: the sender reads all four answers and the end of the connection together.
    said = b"".join(conn.send(answer) for answer in answers)
    sock.sendall(said + conn.send(p.Error(p.ErrorCode.SHUTTING_DOWN, "stopping")))
    sock.close()

    sock, conn = receiver.accept()  # the refused two come back, and only they
    second = offers(sock, conn, 2)
    assert sorted(second) == ["s1.npy", "s3.npy"]
    store_each(sock, conn, second)
    assert isinstance(next_event(sock, conn), p.Bye)
    sock.close()

    assert sender.wait(60) == 0, sender.log
    status = sender_status(config)
    assert status["delivered"] == 4, status
    assert status["backlog"]["files"] == 0, status
