"""SIGINT and SIGTERM stop a sender in the middle of a big file, and the next run resumes it.

The link is throttled by the relay after the first 300 MiB, so the rest of the 512 MiB file
would take minutes: a sender that only looked at its stop flag between files could not exit
within the 5 s these tests allow.  The rerun goes through the relay too (unthrottled), which
counts every byte it moves.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanxfer.errors import ExitCode

from ..procs import Proc
from .faultproxy import CLEAN, FaultProxy, Plan
from .harness import (
    GIVE_UP_SECONDS,
    ReceiverProcess,
    assert_identical,
    send_once,
    send_once_in_background,
    sender_config,
    start_sender,
    wait_until,
    write_big_scan,
)

SIZE_MIB = 512
FAST_PART = 300 << 20  # the relay forwards this much of the file at full speed...
SLOW_RATE = 2_000_000  # ...and the rest at 2 MB/s: over 100 s for the remaining 212 MiB
STOP_WITHIN_SECONDS = 5


@pytest.fixture
def big_scan(tmp_path: Path) -> Path:
    return write_big_scan(tmp_path / "scans" / "big.npy", SIZE_MIB)


@pytest.fixture
def relay(receiver: ReceiverProcess) -> Iterator[FaultProxy]:
    with FaultProxy(receiver.port, [Plan(rate=SLOW_RATE, rate_after=FAST_PART)]) as proxy:
        yield proxy


def stop_mid_file(sender: Proc, relay: FaultProxy, sig: int) -> tuple[int, float]:
    """Once the slow part of the link has begun, send `sig`; the exit status and how long
    the sender took to exit after it."""
    wait_until(lambda: relay.upstream_bytes > FAST_PART + (2 << 20), "the slow part", sender)
    signalled = time.monotonic()
    sender.process.send_signal(sig)
    try:
        status = sender.wait(GIVE_UP_SECONDS)
    finally:
        sender.kill()
    return status, time.monotonic() - signalled


def rerun_resumes(tmp_path: Path, receiver: ReceiverProcess, relay: FaultProxy) -> None:
    """A --once rerun resumes the file where the receiver's partial ends, moving the rest only."""
    scans = tmp_path / "scans"
    size = (scans / "big.npy").stat().st_size
    relay.plans = lambda number: CLEAN
    before = relay.upstream_bytes
    rerun = send_once(sender_config(tmp_path / "rerun.yaml", relay.port, scans))
    assert rerun.returncode == ExitCode.OK, rerun.log
    offset = int(receiver.child.wait_for(r"resuming big\.npy at (\d+)", 10).group(1))
    assert offset > 0
    moved = relay.upstream_bytes - before
    assert moved < 0.6 * size, f"the rerun moved {moved} of {size} bytes"
    assert_identical(scans, receiver.incoming)
    assert receiver.stored_files() == ["big.npy"]


def test_ctrl_c_stops_send_once_mid_file_and_the_rerun_resumes(
    tmp_path: Path, big_scan: Path, receiver: ReceiverProcess, relay: FaultProxy
) -> None:
    config = sender_config(tmp_path / "sender.yaml", relay.port, big_scan.parent)
    sender = send_once_in_background(config)
    status, seconds = stop_mid_file(sender, relay, signal.SIGINT)
    assert status == ExitCode.INTERRUPTED, sender.log
    assert seconds < STOP_WITHIN_SECONDS, sender.log
    assert "interrupted: 0 of 1 files delivered" in sender.log
    assert "Traceback" not in sender.log
    assert receiver.stored_files() == []
    assert len(receiver.partials()) == 1  # kept for the resume
    rerun_resumes(tmp_path, receiver, relay)


def test_sigterm_stops_the_daemon_mid_file_and_the_rerun_resumes(
    tmp_path: Path, big_scan: Path, receiver: ReceiverProcess, relay: FaultProxy
) -> None:
    sender = start_sender(sender_config(tmp_path / "sender.yaml", relay.port, big_scan.parent))
    status, seconds = stop_mid_file(sender, relay, signal.SIGTERM)
    assert status == ExitCode.OK, sender.log
    assert seconds < STOP_WITHIN_SECONDS, sender.log
    assert "stopped; 0 files delivered" in sender.log
    assert "Traceback" not in sender.log
    rerun_resumes(tmp_path, receiver, relay)


@pytest.mark.parametrize("signals", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_during_a_held_handshake_ends_the_run_within_seconds(
    tmp_path: Path, receiver: ReceiverProcess, signals: int
) -> None:
    """The TLS handshake waits in short steps, so a stop is noticed there too, long before
    its stall_timeout; a second Ctrl-C, for whoever will not wait even that, ends it too."""
    scans = tmp_path / "scans"
    write_big_scan(scans / "small.npy", 1)
    with FaultProxy(receiver.port, [Plan(stall_after=0)]) as stalled:
        config = sender_config(tmp_path / "sender.yaml", stalled.port, scans, stall_timeout="120s")
        sender = send_once_in_background(config)
        try:
            assert stalled.link(1).stalled.wait(60), sender.log
            time.sleep(0.5)  # into the handshake's wait
            signalled = time.monotonic()
            for _ in range(signals):
                sender.process.send_signal(signal.SIGINT)
            assert sender.wait(GIVE_UP_SECONDS) == ExitCode.INTERRUPTED, sender.log
            assert time.monotonic() - signalled < STOP_WITHIN_SECONDS
            assert "Traceback" not in sender.log
        finally:
            sender.kill()
