"""A scan the sender may not read is reported as such: failed, with "Permission denied", in
the journal and `scanxfer status`; `send --once` exits 1; a chmod makes it go.

Root reads any file, so the sender runs here without the capabilities that let it
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), as an ordinary user would be.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from scanxfer.errors import ExitCode

from ..procs import Proc
from .harness import (
    ReceiverProcess,
    sender_config,
    sender_status,
    wait_for_files,
    wait_until,
    write_scan,
)

WITHOUT_READ_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def as_an_ordinary_user(label: str, *args: str) -> Proc:
    prefix = WITHOUT_READ_OVERRIDE if os.geteuid() == 0 else []
    return Proc(label, [*prefix, sys.executable, "-m", "scanxfer", *args])


def failed_reasons(status: dict[str, Any]) -> dict[str, str]:
    return {entry["path"]: entry["reason"] for entry in status["failed"]}


def test_send_once_names_permission_denied_and_exits_1(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    write_scan(scans / "fine.npy", (8, 8), 1)
    write_scan(scans / "locked.npy", (8, 8), 2).chmod(0)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans)
    sender = as_an_ordinary_user("sender", "send", "--once", "-c", str(config))
    assert sender.wait(120) == ExitCode.FAILED, sender.log
    assert "cannot send locked.npy: cannot be read: Permission denied" in sender.log
    assert "not a complete" not in sender.log
    assert receiver.stored_files() == ["fine.npy"]
    assert failed_reasons(sender_status(config)) == {
        "locked.npy": "cannot be read: Permission denied"
    }


def test_the_service_reports_it_failed_until_a_chmod_lets_it_through(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    write_scan(scans / "fine.npy", (8, 8), 1)
    locked = write_scan(scans / "locked.npy", (8, 8), 2)
    locked.chmod(0)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans)
    sender = as_an_ordinary_user("sender", "send", "-c", str(config))
    try:
        wait_for_files(receiver, ["fine.npy"], sender)
        wait_until(
            lambda: "locked.npy" in failed_reasons(sender_status(config)),
            "locked.npy reported failed",
            sender,
        )
        reason = failed_reasons(sender_status(config))["locked.npy"]
        assert "Permission denied" in reason
        locked.chmod(0o644)
        wait_for_files(receiver, ["fine.npy", "locked.npy"], sender)
        wait_until(lambda: not sender_status(config)["failed"], "the failure cleared", sender)
    finally:
        assert sender.stop() == 0, sender.log
