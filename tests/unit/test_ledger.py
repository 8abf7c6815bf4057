"""The sender's journal: verdicts, state changes, and surviving a killed process."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from scanxfer.config import SenderConfig, load_sender_config
from scanxfer.sender.ledger import (
    LEDGER_NAME,
    Destination,
    Ledger,
    Outcome,
    State,
    Verdict,
    receiver_identity,
)
from scanxfer.watcher import Version

HERE = Destination("sha256:" + "ab" * 32, "/home/me/scans")


def v(size: int, mtime_ns: int, ctime_ns: int = 1, inode: int = 1) -> Version:
    return Version(size, mtime_ns, ctime_ns, inode)


def test_a_new_file_is_sent_and_then_known_as_delivered(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    assert ledger.observe("a.npy", v(10, 1)) is Verdict.SEND
    ledger.sending("a.npy", v(10, 1), b"d" * 16)
    assert ledger.observe("a.npy", v(10, 1)) is Verdict.SEND  # unfinished: offer again
    ledger.delivered("a.npy", "a.npy", v(10, 1))
    assert ledger.observe("a.npy", v(10, 1)) is Verdict.ALREADY_DELIVERED
    assert ledger.count(State.DELIVERED) == 1
    assert ledger.last_delivered()[0].stored_path == "a.npy"


def test_a_file_changed_after_delivery_is_a_new_version(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    ledger.observe("a.npy", v(10, 1))
    ledger.delivered("a.npy", "a.npy", v(10, 1))
    assert ledger.observe("a.npy", v(10, 2)) is Verdict.NEW_VERSION
    assert [entry.state for entry in ledger.entries(State.PENDING)] == [State.PENDING]
    assert ledger.observe("a.npy", v(10, 2)) is Verdict.SEND


def test_a_version_written_while_the_previous_was_in_flight_stays_owed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    ledger.observe("a.npy", v(10, 1))
    ledger.sending("a.npy", v(10, 1), b"1" * 16)
    assert ledger.observe("a.npy", v(20, 2)) is Verdict.SEND  # rewritten while version 1 flies
    ledger.delivered("a.npy", "a.npy", v(10, 1))  # the ACK for version 1
    # A crash here, then a restart: version 2 must still be sent.
    assert Ledger(tmp_path, HERE).observe("a.npy", v(20, 2)) is Verdict.NEW_VERSION


def test_a_final_refusal_sticks_until_the_file_changes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    ledger.observe("bad.npy", v(5, 1))
    ledger.refused("bad.npy", "bad_name: nope", final=True)
    assert ledger.observe("bad.npy", v(5, 1)) is Verdict.FAILED_BEFORE
    [failed] = ledger.entries(State.FAILED)
    assert (failed.last_error, failed.attempts) == ("bad_name: nope", 1)
    assert ledger.observe("bad.npy", v(6, 1)) is Verdict.RETRY_CHANGED
    assert ledger.entries(State.FAILED) == []


def test_a_retryable_refusal_leaves_the_file_pending(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    ledger.observe("busy.npy", v(5, 1))
    ledger.refused("busy.npy", "busy: later", final=False)
    assert ledger.observe("busy.npy", v(5, 1)) is Verdict.SEND
    assert ledger.entries(State.PENDING)[0].attempts == 1


def test_vanished_files_are_forgotten_but_deliveries_are_not(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    for name in ("gone.npy", "kept.npy"):
        ledger.observe(name, v(1, 1))
    ledger.delivered("kept.npy", "kept.npy", v(1, 1))
    ledger.forget("gone.npy")
    ledger.forget("kept.npy")
    assert ledger.entries(State.PENDING) == []
    assert ledger.count(State.DELIVERED) == 1


def test_delivered_since_counts_recent_bytes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    for name, size in (("a.npy", 100), ("b.npy", 50)):
        ledger.observe(name, v(size, 1))
        ledger.delivered(name, name, v(size, 1))
    assert ledger.delivered_since(0) == (2, 150)
    assert ledger.delivered_since(2**40) == (0, 0)


def test_every_committed_change_survives_a_kill(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from scanxfer.sender.ledger import Destination, Ledger\n"
        "from scanxfer.watcher import Version\n"
        "ledger = Ledger(Path(sys.argv[1]), Destination('r', '/w'))\n"
        "for i in range(50):\n"
        "    ledger.observe(f'{i}.npy', Version(i, i, 1, 1))\n"
        "    ledger.delivered(f'{i}.npy', f'{i}.npy', Version(i, i, 1, 1))\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert result.returncode == -9
    ledger = Ledger(tmp_path, Destination("r", "/w"))
    assert ledger.count(State.DELIVERED) == 50
    assert ledger.observe("49.npy", v(49, 49)) is Verdict.ALREADY_DELIVERED


def test_a_change_that_kept_size_and_mtime_is_a_new_version(tmp_path: Path) -> None:
    """`cp -p` / `rsync -t` / os.utime set the mtime back; the ctime and inode tell."""
    ledger = Ledger(tmp_path, HERE)
    ledger.observe("a.npy", v(10, 1, ctime_ns=5, inode=7))
    ledger.delivered("a.npy", "a.npy", v(10, 1, ctime_ns=5, inode=7))
    assert ledger.observe("a.npy", v(10, 1, ctime_ns=6, inode=7)) is Verdict.NEW_VERSION
    ledger.delivered("a.npy", "a.npy", v(10, 1, ctime_ns=6, inode=7))
    assert ledger.observe("a.npy", v(10, 1, ctime_ns=6, inode=8)) is Verdict.NEW_VERSION


def test_a_journal_from_before_ctime_and_inode_sends_nothing_again(tmp_path: Path) -> None:
    """Rows of an old journal match on size and mtime once, then learn ctime and inode."""
    old = sqlite3.connect(tmp_path / LEDGER_NAME)
    old.executescript(
        "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
        "mtime_ns INTEGER NOT NULL, digest BLOB, state TEXT NOT NULL, "
        "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, first_seen REAL NOT NULL, "
        "delivered_at REAL, stored_path TEXT, versions INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO files VALUES ('a.npy', 10, 1, NULL, 'delivered', 0, NULL, 0, 1, 'a.npy', 1);"
    )
    old.commit()
    old.close()
    ledger = Ledger(tmp_path, HERE)
    assert ledger.observe("a.npy", v(10, 1, ctime_ns=5, inode=7)) is Verdict.ALREADY_DELIVERED
    # Learned: a later change of ctime alone is now seen.
    assert ledger.observe("a.npy", v(10, 1, ctime_ns=5, inode=7)) is Verdict.ALREADY_DELIVERED
    assert ledger.observe("a.npy", v(10, 1, ctime_ns=9, inode=7)) is Verdict.NEW_VERSION


def test_the_digest_of_the_delivered_version_is_kept_for_its_size(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    ledger.observe("a.npy", v(10, 1))
    ledger.sending("a.npy", v(10, 1), b"d" * 16)
    assert ledger.delivered_digest("a.npy", 10) is None  # not delivered yet
    ledger.delivered("a.npy", "a.npy", v(10, 1), b"d" * 16)
    ledger.observe("a.npy", v(10, 2))  # a new version of the same size: still known
    ledger.sending("a.npy", v(10, 2), b"e" * 16)
    assert ledger.delivered_digest("a.npy", 10) == b"d" * 16
    assert ledger.delivered_digest("a.npy", 11) is None


OTHER_RECEIVER = Destination("sha256:" + "cd" * 32, HERE.watch_dir)
OTHER_FOLDER = Destination(HERE.receiver, "/home/me/scans-b")


def test_another_receiver_has_been_sent_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    ledger.observe("a.npy", v(10, 1))
    ledger.delivered("a.npy", "a.npy", v(10, 1))
    other = Ledger(tmp_path, OTHER_RECEIVER)
    assert other.observe("a.npy", v(10, 1)) is Verdict.SEND
    assert other.count(State.DELIVERED) == 0
    # ...and what happens there leaves the first receiver's rows alone.
    other.refused("a.npy", "bad_name: no", final=True)
    assert Ledger(tmp_path, HERE).observe("a.npy", v(10, 1)) is Verdict.ALREADY_DELIVERED


def test_a_second_watch_folder_with_the_same_names_is_new_files_not_new_versions(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path, HERE)
    ledger.observe("run/a.npy", v(10, 1))
    ledger.delivered("run/a.npy", "run/a.npy", v(10, 1))
    second = Ledger(tmp_path, OTHER_FOLDER)
    assert second.observe("run/a.npy", v(10, 2, inode=9)) is Verdict.SEND  # not NEW_VERSION
    assert second.delivered_elsewhere("run/a.npy") == [HERE.watch_dir]
    assert ledger.delivered_elsewhere("run/a.npy") == []  # not delivered from there yet
    second.forget("run/a.npy")
    assert ledger.count(State.DELIVERED) == 1


V1_COLUMNS = (
    "path, size, mtime_ns, digest, state, attempts, last_error, first_seen, delivered_at, "
    "stored_path, versions"
)
PATH_KEYED_V1 = (
    "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
    "mtime_ns INTEGER NOT NULL, digest BLOB, state TEXT NOT NULL, "
    "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, first_seen REAL NOT NULL, "
    "delivered_at REAL, stored_path TEXT, versions INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX files_by_state ON files (state, first_seen);"
    f"INSERT INTO files ({V1_COLUMNS}) VALUES "
    "('a.npy', 10, 1, NULL, 'delivered', 0, NULL, 0, 1, 'a.npy', 1),"
    "('b.npy', 5, 1, NULL, 'failed', 1, 'bad_name: x', 0, NULL, NULL, 0),"
    "('c.npy', 7, 1, NULL, 'pending', 2, 'busy: later', 0, NULL, NULL, 0);"
)
# The same, as a journal that had learned ctime, inode and the delivered digest.
PATH_KEYED_V2 = (
    PATH_KEYED_V1.replace(
        "versions INTEGER NOT NULL DEFAULT 0);",
        "versions INTEGER NOT NULL DEFAULT 0, ctime_ns INTEGER, inode INTEGER, "
        "delivered_digest BLOB);",
    )
    + "UPDATE files SET ctime_ns = 5, inode = 7 WHERE path = 'a.npy';"
)


@pytest.mark.parametrize("old_schema", [PATH_KEYED_V1, PATH_KEYED_V2], ids=["v1", "v2"])
def test_a_path_keyed_journal_is_migrated_to_the_configured_destination(
    tmp_path: Path, old_schema: str
) -> None:
    old = sqlite3.connect(tmp_path / LEDGER_NAME)
    old.executescript(old_schema)
    old.commit()
    old.close()
    ledger = Ledger(tmp_path, HERE)
    # An upgrade sends nothing again: delivered stays delivered, failed stays failed.
    assert ledger.observe("a.npy", v(10, 1, ctime_ns=5, inode=7)) is Verdict.ALREADY_DELIVERED
    assert ledger.observe("b.npy", v(5, 1)) is Verdict.FAILED_BEFORE
    [pending] = ledger.entries(State.PENDING)
    assert (pending.path, pending.attempts, pending.last_error) == ("c.npy", 2, "busy: later")
    ledger.close()
    # Migrated once: reopening with other settings finds the rows where the migration put them.
    assert Ledger(tmp_path, OTHER_RECEIVER).count(State.DELIVERED) == 0
    assert Ledger(tmp_path, HERE).count(State.DELIVERED) == 1
    tables = sqlite3.connect(tmp_path / LEDGER_NAME).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    )
    assert [name for (name,) in tables] == ["files"]


def test_resend_forgets_matching_paths_of_this_destination_only(tmp_path: Path) -> None:
    ledger, other = Ledger(tmp_path, HERE), Ledger(tmp_path, OTHER_FOLDER)
    for journal in (ledger, other):
        for name in ("run7/a.npy", "run7/sub/b.npy", "run8/a.npy", "top.npy"):
            journal.observe(name, v(1, 1))
            journal.delivered(name, name, v(1, 1))
    ledger.refused("top.npy", "bad_name: x", final=True)
    assert ledger.forget_matching(["run7/*", "top.*"]) == [
        "run7/a.npy",
        "run7/sub/b.npy",
        "top.npy",
    ]
    assert ledger.observe("run7/sub/b.npy", v(1, 1)) is Verdict.SEND
    assert ledger.observe("top.npy", v(1, 1)) is Verdict.SEND
    assert ledger.observe("run8/a.npy", v(1, 1)) is Verdict.ALREADY_DELIVERED
    assert other.count(State.DELIVERED) == 4
    assert ledger.forget_matching(["nothing*"]) == []


def test_the_stored_rate_leaves_duplicates_out(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, HERE)
    for name, size, outcome in (
        ("new.npy", 100, Outcome.STORED),
        ("same.npy", 1000, Outcome.DUPLICATE),
        ("beside.npy", 10, Outcome.KEPT_BESIDE),
    ):
        ledger.observe(name, v(size, 1))
        ledger.delivered(name, name, v(size, 1), outcome=outcome)
    assert ledger.delivered_since(0) == (3, 1110)
    assert ledger.delivered_since(0, stored_only=True) == (2, 110)


def config_with(tmp_path: Path, text: str) -> SenderConfig:
    file = tmp_path / "sender.yaml"
    file.write_text(f"watch_dir: {tmp_path / 'scans'}\nreceiver: pi.lab:5000\n{text}")
    return load_sender_config(file)


def test_a_pinned_receiver_is_known_by_its_certificate_else_by_its_address(
    tmp_path: Path,
) -> None:
    pinned = config_with(tmp_path, f"fingerprint: {'AB:' * 31}AB\n")
    assert receiver_identity(pinned) == "sha256:" + "ab" * 32
    assert receiver_identity(config_with(tmp_path, "tls: false\n")) == "scanxfer://pi.lab:5000"
    assert receiver_identity(pinned, "prototype") == "prototype://pi.lab:5000"


def test_the_watch_folder_is_keyed_absolute_and_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "scans")
    monkeypatch.chdir(tmp_path)
    for given in ("scans", "./link", str(tmp_path / "scans")):
        config = dataclasses.replace(config_with(tmp_path, ""), watch_dir=Path(given))
        assert Destination.of(config).watch_dir == str((tmp_path / "scans").resolve())
