"""`scanxfer store-in DIR`: the one command that moves the receiver's storage to another folder.

Run for real, with the settings file and the drop-in folder in temporary places; the booted
Debian container (tests/system) runs it against the installed service.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from scanxfer.store import PARTIAL_FOLDER

from .attack import scanxfer as run_scanxfer

NOBODY = pwd.getpwnam("nobody")
SETTINGS = """\
# The lab's receiver.
listen: 127.0.0.1:0   # any free port
state_dir: {state}
incoming_dir: null
{extra}"""


def receiver_settings(root: Path, extra: str = "") -> Path:
    """Settings whose state folder belongs to the service's user, as the package makes it."""
    state = root / "state"
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    settings = root / "receiver.yaml"
    settings.write_text(SETTINGS.format(state=state, extra=extra))
    return settings


def test_store_in_gives_the_folder_away_and_changes_settings_and_sandbox(open_folder: Path) -> None:
    root = open_folder
    settings = receiver_settings(root)
    (root / "usb").mkdir()
    scans, units = root / "usb" / "scans", root / "units"
    result = run_scanxfer("store-in", str(scans), "-c", str(settings), "--unit-dir", str(units))
    assert result.returncode == 0, result.stderr
    owner = NOBODY.pw_uid if os.geteuid() == 0 else os.geteuid()
    assert scans.stat().st_uid == owner
    assert settings.read_text() == SETTINGS.format(state=root / "state", extra="").replace(
        "incoming_dir: null", f'incoming_dir: "{scans}"'
    ) + ("\n# Set by `scanxfer store-in`.\npartial_dir: null\n")
    drop_in = units / "scanxfer-receiver.service.d" / "scanxfer-storage.conf"
    assert drop_in.read_text() == (
        "# Written by `scanxfer store-in`: the receiver stores into this folder.\n"
        f"[Unit]\nRequiresMountsFor={scans}\n\n[Service]\nReadWritePaths={scans}\n"
    )
    assert result.stderr.splitlines() == [
        f"scanxfer: the receiver now stores into {scans} (set in {settings}; its sandbox allows "
        f"it in {drop_in}).",
        f"scanxfer: files received before stay in {root / 'state' / 'incoming'}.",
        "scanxfer: apply it: sudo systemctl daemon-reload && sudo systemctl restart "
        "scanxfer-receiver",
    ]
    assert os.listdir(scans) == []  # the check left no probe behind
    checked = run_scanxfer("receive", "--check", "-c", str(settings))
    assert checked.returncode == 0, checked.stderr
    assert f"files can be stored in {scans}" in checked.stderr
    assert PARTIAL_FOLDER not in os.listdir(scans)  # a check makes nothing


def test_a_disk_not_mounted_changes_nothing(open_folder: Path) -> None:
    root = open_folder
    settings = receiver_settings(root)
    before = settings.read_text()
    scans, units = root / "usb" / "scans", root / "units"
    result = run_scanxfer("store-in", str(scans), "-c", str(settings), "--unit-dir", str(units))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"scanxfer: error: {scans.parent} does not exist: if {scans} is on a disk, mount it "
        "first (and add it to /etc/fstab, so it is mounted at boot)"
    )
    assert settings.read_text() == before and not units.exists() and not scans.parent.exists()


def test_a_folder_that_fails_the_check_changes_no_settings(open_folder: Path) -> None:
    root = open_folder
    settings = receiver_settings(root, "min_free_space: 1000TiB\n")
    before = settings.read_text()
    scans, units = root / "scans", root / "units"
    result = run_scanxfer("store-in", str(scans), "-c", str(settings), "--unit-dir", str(units))
    assert result.returncode == 4
    assert result.stderr.startswith(f"scanxfer: error: cannot store into {scans}: only ")
    assert "less than min_free_space (1000.0 TiB)" in result.stderr
    assert settings.read_text() == before and not units.exists()


def test_a_folder_name_a_unit_cannot_carry_is_refused(open_folder: Path) -> None:
    root = open_folder
    settings = receiver_settings(root)
    result = run_scanxfer("store-in", str(root / "my scans"), "-c", str(settings))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"scanxfer: error: '{root / 'my scans'}' has a blank, a quote or a backslash in it, "
        "which the service's settings cannot carry; choose a folder name without them"
    )
    assert not (root / "my scans").exists()
