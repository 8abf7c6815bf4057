"""A long outage does not wear the sender out: after 5,000 failures in a row, of either kind,
it is still running and delivers everything once the receiver can take it.

With the packaged retry settings 5,000 failures are days of a switched-off Pi; tiny settings
make them seconds, and the count the same.
"""

from __future__ import annotations

import signal
from pathlib import Path

from .harness import (
    ReceiverProcess,
    assert_identical,
    sender_config,
    start_sender,
    unused_port,
    wait_for_files,
    write_scan,
)

FAILURES = 5000
TINY_RETRIES = {"retry_initial": "1ms", "retry_max": "2ms"}


def test_5000_connection_failures_in_a_row_then_the_receiver_comes_up(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    names = [write_scan(scans / f"s{index}.npy", (16, 16), index).name for index in range(5)]
    port = unused_port()
    sender = start_sender(sender_config(tmp_path / "sender.yaml", port, scans, **TINY_RETRIES))
    receiver = ReceiverProcess(tmp_path / "pi", port=port)
    try:
        sender.wait_for(r"; retrying in", 600, count=FAILURES)
        assert sender.returncode is None, sender.log[-2000:]
        receiver.start()
        wait_for_files(receiver, names, sender)
    finally:
        assert sender.stop() == 0, sender.log[-2000:]
        if receiver.child is not None:
            receiver.stop()
    assert_identical(scans, receiver.incoming)


def test_5000_no_space_refusals_in_a_row_then_room_is_made(tmp_path: Path) -> None:
    settings = tmp_path / "receiver.yaml"
    settings.write_text("min_free_space: 0\n")
    receiver = ReceiverProcess(tmp_path / "pi", config=settings).start()
    # More than any disk, set while running (below it the receiver would not start): all
    # offers refused.
    settings.write_text(f"min_free_space: {2**60}\n")
    assert receiver.child is not None
    receiver.child.process.send_signal(signal.SIGHUP)
    receiver.child.wait_for("settings reloaded", 60)
    scans = tmp_path / "scans"
    names = [write_scan(scans / f"s{index}.npy", (16, 16), index).name for index in range(5)]
    sender = start_sender(
        sender_config(tmp_path / "sender.yaml", receiver.port, scans, **TINY_RETRIES)
    )
    try:
        sender.wait_for("receiver has no space for", 600, count=FAILURES)
        assert sender.returncode is None, sender.log[-2000:]
        assert receiver.stored_files() == []
        settings.write_text("min_free_space: 0\n")
        assert receiver.child is not None
        receiver.child.process.send_signal(signal.SIGHUP)  # the settings again: room now
        wait_for_files(receiver, names, sender)
    finally:
        assert sender.stop() == 0, sender.log[-2000:]
        receiver.stop()
    assert_identical(scans, receiver.incoming)
