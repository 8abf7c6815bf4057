"""The sender's journal: verdicts, state changes, and surviving a killed process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scanxfer.ledger import Ledger, State, Verdict


def test_a_new_file_is_sent_and_then_known_as_delivered(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    assert ledger.observe("a.npy", 10, 1) is Verdict.SEND
    ledger.sending("a.npy", 10, 1, b"d" * 16)
    assert ledger.observe("a.npy", 10, 1) is Verdict.SEND  # unfinished: offer again
    ledger.delivered("a.npy", "a.npy", 10, 1)
    assert ledger.observe("a.npy", 10, 1) is Verdict.ALREADY_DELIVERED
    assert ledger.count(State.DELIVERED) == 1
    assert ledger.last_delivered()[0].stored_path == "a.npy"


def test_a_file_changed_after_delivery_is_a_new_version(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.observe("a.npy", 10, 1)
    ledger.delivered("a.npy", "a.npy", 10, 1)
    assert ledger.observe("a.npy", 10, 2) is Verdict.NEW_VERSION
    assert [entry.state for entry in ledger.entries(State.PENDING)] == [State.PENDING]
    assert ledger.observe("a.npy", 10, 2) is Verdict.SEND


def test_a_version_written_while_the_previous_was_in_flight_stays_owed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.observe("a.npy", 10, 1)
    ledger.sending("a.npy", 10, 1, b"1" * 16)
    assert ledger.observe("a.npy", 20, 2) is Verdict.SEND  # rewritten while version 1 flies
    ledger.delivered("a.npy", "a.npy", 10, 1)  # the ACK for version 1
    # A crash here, then a restart: version 2 must still be sent.
    assert Ledger(tmp_path).observe("a.npy", 20, 2) is Verdict.NEW_VERSION


def test_a_final_refusal_sticks_until_the_file_changes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.observe("bad.npy", 5, 1)
    ledger.refused("bad.npy", "bad_name: nope", final=True)
    assert ledger.observe("bad.npy", 5, 1) is Verdict.FAILED_BEFORE
    [failed] = ledger.entries(State.FAILED)
    assert (failed.last_error, failed.attempts) == ("bad_name: nope", 1)
    assert ledger.observe("bad.npy", 6, 1) is Verdict.RETRY_CHANGED
    assert ledger.entries(State.FAILED) == []


def test_a_retryable_refusal_leaves_the_file_pending(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.observe("busy.npy", 5, 1)
    ledger.refused("busy.npy", "busy: later", final=False)
    assert ledger.observe("busy.npy", 5, 1) is Verdict.SEND
    assert ledger.entries(State.PENDING)[0].attempts == 1


def test_vanished_files_are_forgotten_but_deliveries_are_not(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    for name in ("gone.npy", "kept.npy"):
        ledger.observe(name, 1, 1)
    ledger.delivered("kept.npy", "kept.npy", 1, 1)
    ledger.forget("gone.npy")
    ledger.forget("kept.npy")
    assert ledger.entries(State.PENDING) == []
    assert ledger.count(State.DELIVERED) == 1


def test_delivered_since_counts_recent_bytes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    for name, size in (("a.npy", 100), ("b.npy", 50)):
        ledger.observe(name, size, 1)
        ledger.delivered(name, name, size, 1)
    assert ledger.delivered_since(0) == (2, 150)
    assert ledger.delivered_since(2**40) == (0, 0)


def test_every_committed_change_survives_a_kill(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from scanxfer.ledger import Ledger\n"
        "ledger = Ledger(Path(sys.argv[1]))\n"
        "for i in range(50):\n"
        "    ledger.observe(f'{i}.npy', i, i)\n"
        "    ledger.delivered(f'{i}.npy', f'{i}.npy', i, i)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert result.returncode == -9
    ledger = Ledger(tmp_path)
    assert ledger.count(State.DELIVERED) == 50
    assert ledger.observe("49.npy", 49, 49) is Verdict.ALREADY_DELIVERED
