"""Sender keys changed under a running receiver: a replaced key ends its open connection, and
`keys list` shows when and from where each sender was last seen.

Real `scanxfer receive` and `scanxfer keys` processes, real sockets; the old key's
connection is a hand-driven client, so the test can stop it half-way through a file.
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from scanxfer import protocol as p
from scanxfer.keys.pairing import parse_pairing

from .attack import StartReceiver, logged, scanxfer
from .harness import (
    GIVE_UP_SECONDS,
    TEST_SENDER,
    assert_identical,
    send_once,
    sender_config,
    wait_until,
    write_scan,
)
from .rawclient import RawSender, read_frames

# A local time with its UTC offset, and the address: what `keys list` shows under LAST SEEN.
LAST_SEEN = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}) from (\S+)$")


def test_a_replaced_key_closes_the_connection_that_proved_the_old_one(
    start_receiver: StartReceiver,
) -> None:
    receiver = start_receiver()
    old = RawSender(receiver.port, source="127.0.0.2")
    before = old.send_file("before.npy", b"stored while the old key counted")
    assert isinstance(before, p.Ack) and before.outcome is p.Outcome.STORED, before
    # Half-way through a file when the key is replaced.
    payload = os.urandom(1 << 16)
    old.offer("during.npy", payload)
    ready = old.next_event()
    assert isinstance(ready, p.Ready), ready
    old.send(p.DataHeader(ready.file_id, 0, len(payload)))
    old.send_raw(payload[: len(payload) // 2])

    replaced = scanxfer(
        "keys", "add", TEST_SENDER, "--replace", "--state-dir", str(receiver.state),
        "--address", f"127.0.0.1:{receiver.port}",
    )  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    new_secret = parse_pairing(replaced.stdout.strip()).secret

    logged(
        receiver,
        f"{old.address} ({TEST_SENDER}): its key was replaced (keys add --replace); "
        f"closing the connection",
    )
    with contextlib.suppress(OSError):  # the receiver may have reset the connection already
        old.send_raw(payload[len(payload) // 2 :])
        old.offer("after.npy", b"offered on the old key after its replacement")
    old.sock.settimeout(GIVE_UP_SECONDS)  # a give-up bound: the close comes first
    assert read_frames(old.sock) == []  # no ACK for either file: the connection is closed
    old.close()

    refused = RawSender(receiver.port, authenticate=False, source="127.0.0.3").handshake()
    assert isinstance(refused, p.Error) and refused.code is p.ErrorCode.AUTH_FAILED, refused
    new = RawSender(receiver.port, secret=new_secret, source="127.0.0.4")
    answer = new.send_file("new.npy", b"stored with the new key")
    assert isinstance(answer, p.Ack) and answer.outcome is p.Outcome.STORED, answer
    new.send(p.Bye())
    new.close()
    assert receiver.stored_files() == sorted([before.stored_path, answer.stored_path])


def test_keys_list_shows_when_and_from_where_a_sender_was_last_seen(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver()
    issued = scanxfer(
        "keys", "add", "spare-pc", "--state-dir", str(receiver.state), "--address", "pi"
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (64,), seed=5)
    started = datetime.now(UTC).replace(microsecond=0)
    sender = send_once(sender_config(tmp_path / "sender.yaml", receiver.port, scans))
    assert sender.process.returncode == 0, sender.log
    assert_identical(scans, receiver.incoming)

    def rows() -> dict[str, str]:
        listed = scanxfer("keys", "list", "--state-dir", str(receiver.state))
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        start = lines[0].index("LAST SEEN")
        return {line.split()[0]: line[start:] for line in lines[1 : lines.index("")]}

    # The receiver writes a first sighting at its next tick, about a second later.
    wait_until(lambda: rows()[TEST_SENDER] != "never", "a LAST SEEN for the sender", receiver.child)
    listed = rows()
    now = datetime.now(UTC)
    assert listed["spare-pc"] == "never"
    match = LAST_SEEN.fullmatch(listed[TEST_SENDER])
    assert match is not None, listed
    when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S %z")
    assert started <= when <= now
    assert when.utcoffset() == datetime.now().astimezone().utcoffset()  # shown in local time
    assert match.group(2) == "127.0.0.1"  # where the sender connected from
