"""An OFFER on a key revoked a moment ago is refused at the OFFER, not only at the next tick.

The receiver's door ends the connections of a revoked or replaced key at its tick, about
once a second; until then an OFFER on the old key could still be stored.  Here the door runs
without the server's loop, so no tick comes at all: whatever refuses the offer is the
connection's own check.  The key is revoked by the real `scanxfer keys revoke` command.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanxfer import protocol as p
from scanxfer.config import load_receiver_config
from scanxfer.receiver import Services, Stats
from scanxfer.receiver.gate import Gate
from scanxfer.receiver.protocol_door import ProtocolDoor
from scanxfer.store import Store, StoreLimits

from .attack import scanxfer
from .harness import GIVE_UP_SECONDS, TEST_SENDER, install_credentials
from .rawclient import RawSender, read_frames

AUTH_FAILED = p.Error(p.ErrorCode.AUTH_FAILED, "authentication failed")


@pytest.fixture
def door(tmp_path: Path) -> Iterator[ProtocolDoor]:
    """The scanxfer door of a receiver with the test sender's key, and no main loop."""
    install_credentials(tmp_path / "state")
    settings = tmp_path / "receiver.yaml"
    settings.write_text(f"listen: 127.0.0.1:0\nstate_dir: {tmp_path / 'state'}\n")
    config = load_receiver_config(settings)
    limits = StoreLimits(config.max_path_length, config.max_path_depth)
    store = Store(config.incoming_dir, config.partial_dir, limits)
    opened = ProtocolDoor(config, Services(store, Stats(), Gate(config)))
    yield opened
    opened.close()


def connect(door: ProtocolDoor) -> RawSender:
    """A sender through the handshake, its connection accepted as the server's loop would."""

    def accept() -> None:
        select.select([door.listener], [], [], GIVE_UP_SECONDS)
        door.accept()

    accepting = threading.Thread(target=accept)
    accepting.start()
    try:
        return RawSender(door.address.port)
    finally:
        accepting.join()


def test_an_offer_right_after_keys_revoke_is_refused(door: ProtocolDoor, tmp_path: Path) -> None:
    sender = connect(door)
    before = sender.send_file("before.npy", b"stored while the key counted")
    assert isinstance(before, p.Ack) and before.outcome is p.Outcome.STORED, before
    revoked = scanxfer("keys", "revoke", TEST_SENDER, "--state-dir", str(tmp_path / "state"))
    assert revoked.returncode == 0, revoked.stderr
    sender.offer("after.npy", b"offered on a revoked key")
    sender.sock.settimeout(GIVE_UP_SECONDS)  # a give-up bound: the answer comes first
    assert read_frames(sender.sock) == [AUTH_FAILED]
    sender.close()
    incoming = door.services.store.incoming_dir
    assert sorted(path.name for path in incoming.rglob("*") if path.is_file()) == ["before.npy"]
    partials = door.services.store.partial_dir
    assert [path.name for path in partials.rglob("*") if path.is_file()] == []
