"""TLS on the receiver's side of a real connection (receiver/tls_channel.py): a stopping
receiver still says goodbye through it."""

from __future__ import annotations

import signal

from scanxfer import protocol as p

from .attack import StartReceiver, logged
from .rawclient import RawSender, read_frames


def test_a_stopping_receiver_says_so_through_tls(start_receiver: StartReceiver) -> None:
    """SIGTERM shuts the connection's way in; the way out still carries SHUTTING_DOWN."""
    receiver = start_receiver()
    client = RawSender(receiver.port)  # TLS, and the test key proven
    logged(receiver, "connected")
    assert receiver.child is not None
    receiver.child.process.send_signal(signal.SIGTERM)
    client.sock.settimeout(60)  # a give-up bound: the answer comes first
    assert read_frames(client.sock) == [
        p.Error(p.ErrorCode.SHUTTING_DOWN, "receiver is shutting down")
    ]
    client.close()
