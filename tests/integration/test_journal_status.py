"""The journal knows where it delivered, and `status` describes the sender that runs.

Real receivers and senders on loopback: a second watch folder with the same names, a second
receiver, a receiver nobody listens for, `--resend`, and `status --json` while the receiver
is down.  Assertions are on what was stored, the logs and the exit codes, never on speed.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from scanxfer.errors import ExitCode
from scanxfer.sender.ledger import LEDGER_NAME
from scanxfer.tls import load_identity

from ..procs import start_scanxfer
from .attack import StartReceiver
from .harness import (
    ReceiverProcess,
    count_matches,
    send_once,
    sender_config,
    sender_status,
    start_sender,
    unused_port,
    wait_until,
    write_scan,
)

NAMES = ["run1/scan_000001.npy", "run1/scan_000002.npy", "scan_000003.npy"]


def write_folder(folder: Path, seed: int = 0) -> None:
    for index, name in enumerate(NAMES):
        write_scan(folder / name, (4096,), seed + index)


def test_two_watch_folders_with_the_same_names_store_each_file_once(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    first, second = tmp_path / "scans-a", tmp_path / "scans-b"
    write_folder(first)
    shutil.copytree(first, second, copy_function=shutil.copy)  # same bytes, new mtimes
    config_a = sender_config(tmp_path / "a.yaml", receiver.port, first)
    assert send_once(config_a).returncode == 0
    config_b = sender_config(tmp_path / "b.yaml", receiver.port, second)
    sender = send_once(config_b)
    assert sender.returncode == 0, sender.log
    assert receiver.stored_files() == sorted(NAMES)  # no name~1.npy beside any of them
    assert count_matches("changed after delivery", sender.log) == 0, sender.log
    assert count_matches("is already on the receiver", sender.log) == len(NAMES), sender.log
    # Each folder's journal has its own three deliveries; the rate counts stored bytes only.
    status_a, status_b = sender_status(config_a), sender_status(config_b)
    assert status_a["delivered"] == status_b["delivered"] == len(NAMES)
    stored = sum((first / name).stat().st_size for name in NAMES)
    assert (status_a["rate"]["files"], status_a["rate"]["bytes"]) == (len(NAMES), stored)
    assert (status_b["rate"]["files"], status_b["rate"]["bytes"]) == (0, 0)


def test_a_same_named_file_with_other_bytes_is_kept_beside_and_says_why(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    """Nothing is overwritten on the receiver, and the sender does not take folder B's file
    for a new version of folder A's: it says where the other came from."""
    first, second = tmp_path / "scans-a", tmp_path / "scans-b"
    write_scan(first / "scan.npy", (64,), seed=1)
    write_scan(second / "scan.npy", (64,), seed=2)
    assert send_once(sender_config(tmp_path / "a.yaml", receiver.port, first)).returncode == 0
    sender = send_once(sender_config(tmp_path / "b.yaml", receiver.port, second))
    assert sender.returncode == 0, sender.log
    assert receiver.stored_files() == ["scan.npy", "scan~1.npy"]
    assert count_matches("changed after delivery", sender.log) == 0, sender.log
    assert f"delivered from {first.resolve()}" in sender.log


def test_pairing_with_another_receiver_delivers_everything_there(
    tmp_path: Path, receiver: ReceiverProcess, start_receiver: StartReceiver
) -> None:
    scans = tmp_path / "scans"
    write_folder(scans)
    assert send_once(sender_config(tmp_path / "sender.yaml", receiver.port, scans)).returncode == 0
    other = start_receiver("second", own_identity=True)
    fingerprint = load_identity(other.state).fingerprint
    config = sender_config(tmp_path / "sender.yaml", other.port, scans, fingerprint=fingerprint)
    sender = send_once(config)
    assert sender.returncode == 0, sender.log
    assert other.stored_files() == sorted(NAMES)
    assert count_matches("nothing to send", sender.log) == 0
    # Back to the first one: everything is known as delivered there, after asking it.
    again = send_once(sender_config(tmp_path / "sender.yaml", receiver.port, scans))
    assert again.returncode == 0, again.log
    assert f"nothing to send: {len(NAMES)} files already delivered" in again.log


def test_nothing_to_send_is_not_said_of_a_receiver_nobody_answers_for(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    write_folder(scans)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans)
    assert send_once(config).returncode == 0
    nowhere = f"127.0.0.1:{unused_port()}"
    sender = start_scanxfer("sender", "send", "--once", "-c", str(config), "--to", nowhere)
    assert sender.wait(120) == ExitCode.UNREACHABLE, sender.log
    assert count_matches("nothing to send:", sender.log) == 0, sender.log
    errors = [line for line in sender.log.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and nowhere in errors[0], sender.log


def test_resend_sends_matching_files_again(tmp_path: Path, receiver: ReceiverProcess) -> None:
    scans = tmp_path / "scans"
    write_folder(scans)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans)
    assert send_once(config).returncode == 0
    for name in NAMES:
        (receiver.incoming / name).unlink()  # lost on the receiver
    sender = start_scanxfer("sender", "send", "--once", "-c", str(config), "--resend", "run1/*")
    assert sender.wait(120) == 0, sender.log
    assert receiver.stored_files() == sorted(NAMES[:2])
    assert "sending again 2 files" in sender.log
    assert (receiver.incoming / NAMES[0]).read_bytes() == (scans / NAMES[0]).read_bytes()


def test_status_shows_a_sender_retrying_with_its_last_error_then_not_running(
    tmp_path: Path,
) -> None:
    scans = tmp_path / "scans"
    write_folder(scans)
    port = unused_port()
    config = sender_config(tmp_path / "sender.yaml", port, scans)
    sender = start_sender(config)
    try:

        def retrying() -> bool:
            link = sender_status(config)["connection"]
            return link is not None and link["state"] == "retrying" and link["failures"] >= 2

        wait_until(retrying, "status to show the sender retrying", sender)
        status = sender_status(config)
    finally:
        assert sender.stop() == 0, sender.log
    assert status["sender"]["running"] and status["sender"]["pid"] == sender.process.pid
    assert f"cannot connect to receiver 127.0.0.1:{port}" in status["connection"]["last_error"]
    assert "refused" in status["connection"]["last_error"].lower()
    assert status["connection"]["next_attempt"] is not None
    assert status["backlog"]["files"] == len(NAMES)
    assert status["rate"]["bytes"] == 0
    stopped = sender_status(config)
    assert stopped["sender"]["running"] is False and stopped["connection"] is None


def test_a_journal_from_before_sends_nothing_again_after_the_upgrade(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    """A journal keyed by relative path alone, as earlier versions wrote it, is taken over:
    its files count as delivered to the receiver and folder configured now."""
    scans = tmp_path / "scans"
    write_folder(scans)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans)
    state = tmp_path / "sender-state"
    state.mkdir()
    old = sqlite3.connect(state / LEDGER_NAME)
    old.execute(
        "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
        "mtime_ns INTEGER NOT NULL, digest BLOB, state TEXT NOT NULL, "
        "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, first_seen REAL NOT NULL, "
        "delivered_at REAL, stored_path TEXT, versions INTEGER NOT NULL DEFAULT 0)"
    )
    for name in NAMES:
        stat = (scans / name).stat()
        old.execute(
            "INSERT INTO files VALUES (?, ?, ?, NULL, 'delivered', 0, NULL, 0, 1, ?, 1)",
            (name, stat.st_size, stat.st_mtime_ns, name),
        )
    old.commit()
    old.close()
    sender = send_once(config)
    assert sender.returncode == 0, sender.log
    assert f"nothing to send: {len(NAMES)} files already delivered" in sender.log
    assert receiver.stored_files() == []  # not one byte offered again
    assert sender_status(config)["delivered"] == len(NAMES)
