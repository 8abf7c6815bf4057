"""A sender killed in the middle of after_send: delete, between hiding the scan and unlinking it.

The kill is real: `strace -P` watches the hidden name only, and injects SIGKILL into the
sender's unlink of it, so the process dies exactly where a crash (OOM killer, `kill -9`,
`systemctl kill`) would leave `.NAME.scanxfer-deleting` behind.  The next run must finish
the delete when the hidden file is the delivered one, and put it back under its name, to be
sent again, when it is not; either way no scan is lost and nothing hidden is left.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest
import xxhash

from ..procs import Proc
from .harness import ReceiverProcess, send_once, sender_config, write_scan

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")

SCAN = "run1/a.npy"
HIDDEN = "run1/.a.npy.scanxfer-deleting"


def digest(path: Path) -> str:
    return xxhash.xxh3_128_hexdigest(path.read_bytes())


def killed_while_deleting(tmp_path: Path, receiver: ReceiverProcess) -> tuple[Path, Path, str]:
    """Deliver SCAN with after_send: delete, the sender killed at the unlink of its hidden
    name; (settings, watch folder, the scan's digest)."""
    watch = tmp_path / "scans"
    write_scan(watch / SCAN, (128, 128), seed=5)
    original = digest(watch / SCAN)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, watch, after_send="delete")
    hidden = watch / HIDDEN
    # Only calls on the hidden name are traced, so the one unlink killed is the delete's.
    strace = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(hidden)]
    kill = ["-e", "trace=unlink,unlinkat", "-e", "inject=unlink,unlinkat:signal=KILL"]
    send = [sys.executable, "-m", "scanxfer", "send", "--once", "-c", str(config)]
    traced = Proc("killed sender", [*strace, *kill, *send])
    traced.wait(120)
    assert traced.returncode == -signal.SIGKILL or traced.returncode == 128 + signal.SIGKILL, (
        traced.log
    )
    assert f"sent {SCAN}" in traced.log, traced.log
    assert not (watch / SCAN).exists() and hidden.is_file()  # the state a kill leaves
    return config, watch, original


def stored(receiver: ReceiverProcess) -> list[str]:
    return sorted(digest(receiver.incoming / path) for path in receiver.stored_files())


def test_the_next_run_finishes_deleting_the_delivered_scan(tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "pi").start()
    try:
        config, watch, original = killed_while_deleting(tmp_path, receiver)
        again = send_once(config)
        assert again.returncode == 0, again.log
    finally:
        receiver.stop()
    assert "deleted run1/a.npy after delivery (a stopped sender had left it half-done)" in (
        again.log
    )
    assert sorted(p.name for p in (watch / "run1").iterdir()) == []
    assert stored(receiver) == [original]  # delivered once, not sent again


def test_a_hidden_scan_that_changed_is_put_back_and_sent_again(tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "pi").start()
    try:
        config, watch, original = killed_while_deleting(tmp_path, receiver)
        # The instrument came back to it through the file it had open: not what was sent.
        with (watch / HIDDEN).open("r+b") as scan:
            scan.seek(-4, 2)
            scan.write(b"\x01\x02\x03\x04")
        changed = digest(watch / HIDDEN)
        again = send_once(config)
        assert again.returncode == 0, again.log
    finally:
        receiver.stop()
    assert "run1/a.npy was being deleted when a sender stopped; put back" in again.log
    assert f"sent {SCAN}" in again.log, again.log
    assert sorted(p.name for p in (watch / "run1").iterdir()) == []  # delivered, then deleted
    assert stored(receiver) == sorted([original, changed])  # both versions kept, none lost
