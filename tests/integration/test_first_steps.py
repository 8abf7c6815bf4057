"""The sender's first hours: a watch folder that is not there yet, a state folder it cannot
use, and `install-user-unit --watch DIR` on a fresh account."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import scanxfer

from .harness import (
    ReceiverProcess,
    assert_identical,
    send_once,
    sender_config,
    start_sender,
    wait_for_files,
    write_scan,
)

REPO = Path(scanxfer.__file__).parents[1]


def test_the_service_waits_for_a_missing_watch_folder_and_never_creates_it(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scnas"  # a typo the service must not quietly make real
    sender = start_sender(sender_config(tmp_path / "sender.yaml", receiver.port, scans))
    try:
        sender.wait_for(f"watch folder {scans} does not exist; waiting for it to appear", 60)
        assert not scans.exists()
        assert sender.returncode is None  # no restart loop: it waits
        write_scan(scans / "late.npy", (32, 32), 1)  # the folder appears, with a scan in it
        sender.wait_for(f"watch folder {scans} appeared", 60)
        wait_for_files(receiver, ["late.npy"], sender)
        assert_identical(scans, receiver.incoming)
    finally:
        assert sender.stop() == 0, sender.log


def test_an_unusable_state_folder_is_a_settings_error_without_a_traceback(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (8, 8), 1)
    (tmp_path / "a-file").write_text("not a folder\n")
    state = tmp_path / "a-file" / "state"
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans, state_dir=str(state))
    sender = send_once(config, timeout=120)
    assert sender.returncode == 2, sender.log
    assert f"cannot keep the sender's journal in {state}" in sender.log
    assert "Traceback" not in sender.log
    assert receiver.stored_files() == []


def test_install_user_unit_creates_the_watch_folder_it_is_given(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "scanxfer", "install-user-unit", "--watch", "~/scans"],
        cwd=REPO,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (home / "scans").is_dir()
    assert f"created the watch folder {home / 'scans'}" in result.stderr
    unit = home / ".config" / "systemd" / "user" / "scanxfer-sender.service"
    assert "SyslogIdentifier=scanxfer-sender" in unit.read_text()


def test_verbose_names_the_settings_and_times_each_offer(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (8, 8), 1)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans)
    result = subprocess.run(
        [sys.executable, "-m", "scanxfer", "-v", "send", "--once", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"debug: reading settings from {config}" in result.stderr
    assert "debug: offering a.npy (" in result.stderr
    assert re.search(r"debug: a\.npy: ACK STORED \d+\.\d{3} s after its offer", result.stderr)
    quiet = subprocess.run(
        [sys.executable, "-m", "scanxfer", "send", "--once", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 0 and "debug:" not in quiet.stderr
