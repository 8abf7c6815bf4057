"""CANCEL against a real receiver, and the partials of versions that can never resume.

A withdrawn file leaves nothing behind, not even a partial, gets no answer, and the
connection goes on.  A partial of an older version of a path, left by a connection that
died mid-payload, goes once a newer version of that path is offered.
"""

from __future__ import annotations

import os

from scanxfer import protocol as p
from scanxfer.store import PARTIAL_FOLDER
from scanxfer.store.partial import SIDECAR_MIN_SIZE

from .attack import logged
from .harness import TEST_SENDER, ReceiverProcess
from .rawclient import RawSender, read_frames

CANCEL = {p.CANCEL_OPTION: p.CANCEL_ON}


def partial_area(receiver: ReceiverProcess) -> list[str]:
    """Everything in the receiver's partial directory: bytes and sidecars alike."""
    return sorted(os.listdir(receiver.incoming / PARTIAL_FOLDER))


def prefix(client: RawSender) -> str:
    """How the receiver's log names the client's connection."""
    return f"{client.address} ({TEST_SENDER}): "


def assert_goes_on(receiver: ReceiverProcess, client: RawSender) -> None:
    """The connection stores a next file, and only it: no answer came for the withdrawn one
    (the client's state machine would refuse it, its file id being unknown)."""
    answer = client.send_file("run1/next.npy", b"the next scan")
    assert answer == p.Ack(answer.file_id, p.Outcome.STORED, "run1/next.npy"), answer
    assert receiver.stored_files() == ["run1/next.npy"]
    assert partial_area(receiver) == []


def test_the_receiver_echoes_the_cancel_option_only_when_asked(
    receiver: ReceiverProcess,
) -> None:
    assert RawSender(receiver.port, options=CANCEL).conn.can_cancel
    assert not RawSender(receiver.port).conn.can_cancel


def test_a_deferred_file_withdrawn_after_its_payload_leaves_nothing(
    receiver: ReceiverProcess,
) -> None:
    client = RawSender(receiver.port, options=CANCEL)
    # Big enough to get its sidecar at once: that must go too.
    payload = os.urandom(SIDECAR_MIN_SIZE + 4096)
    file_id = client.offer("run1/scan.npy", payload, deferred=True)
    ready = client.next_event()
    assert ready == p.Ready(file_id, 0), ready
    client.stream(ready, payload)
    client.send(p.Cancel(file_id))
    logged(
        receiver,
        prefix(client) + "sender withdrew 'run1/scan.npy': it changed while being sent; "
        "nothing kept",
    )
    assert_goes_on(receiver, client)


def test_a_ready_file_withdrawn_instead_of_its_data_leaves_nothing(
    receiver: ReceiverProcess,
) -> None:
    client = RawSender(receiver.port, options=CANCEL)
    file_id = client.offer("run1/gone.npy", b"a scan that vanished")
    assert client.next_event() == p.Ready(file_id, 0)
    client.send(p.Cancel(file_id))
    logged(
        receiver,
        prefix(client) + "sender withdrew 'run1/gone.npy': it changed before it was sent; "
        "nothing kept",
    )
    assert_goes_on(receiver, client)


def test_a_cancel_that_was_not_negotiated_ends_the_connection(receiver: ReceiverProcess) -> None:
    client = RawSender(receiver.port)
    file_id = client.offer("run1/scan.npy", b"some scan")
    assert client.next_event() == p.Ready(file_id, 0)
    client.send_raw(p.encode(p.Cancel(file_id)))  # our Connection refuses to send it
    (error,) = read_frames(client.sock)
    assert isinstance(error, p.Error) and error.code is p.ErrorCode.PROTOCOL_ERROR, error
    logged(receiver, prefix(client) + "protocol error, closing: CANCEL for file 1, but the")
    assert receiver.stored_files() == []


def test_the_partial_of_an_older_version_goes_when_a_newer_one_is_offered(
    receiver: ReceiverProcess,
) -> None:
    first = RawSender(receiver.port, options=CANCEL)
    old = os.urandom(3 * SIDECAR_MIN_SIZE)
    file_id = first.offer("run1/scan.npy", old, deferred=True)
    assert first.next_event() == p.Ready(file_id, 0)
    first.send(p.DataHeader(file_id, 0, len(old)), old[: len(old) // 2])
    first.close()  # the file shrank: its sender had to drop the connection mid-payload
    assert len(receiver.partials()) == 1

    second = RawSender(receiver.port, options=CANCEL)
    new = os.urandom(2 * SIDECAR_MIN_SIZE)
    answer = second.send_file("run1/scan.npy", new)
    assert answer == p.Ack(answer.file_id, p.Outcome.STORED, "run1/scan.npy"), answer
    # Dropped at the OFFER if the first connection had let go of it by then, else as it did.
    logged(receiver, ": dropped the partial of an older version of run1/scan.npy")
    assert receiver.partials() == [] and partial_area(receiver) == []
    assert (receiver.incoming / "run1/scan.npy").read_bytes() == new
