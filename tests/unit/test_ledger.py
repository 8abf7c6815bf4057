"""The sender's journal: verdicts, state changes, and surviving a killed process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from scanxfer.sender.ledger import LEDGER_NAME, Destination, Ledger, State, Verdict
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
