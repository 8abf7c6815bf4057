"""The receiver refuses to start when it could not store a file, and says why in one line.

Each case runs the real command twice: `scanxfer receive` (what the service runs) and
`scanxfer receive --check` (what `systemctl reload` and an admin run); both name the same cause
and fix, and both exit 4, the README's status for storage folders the receiver cannot use.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import scanxfer
from scanxfer.errors import ExitCode
from scanxfer.store import PARTIAL_FOLDER

REPO = Path(scanxfer.__file__).parents[1]
NOBODY = pwd.getpwnam("nobody")
SAID = "scanxfer: error: "  # how a message is told on a terminal (journald gets the bare text)


def receive(tmp_path: Path, settings: str, *options: str) -> subprocess.CompletedProcess[str]:
    """`scanxfer receive -c FILE OPTIONS` with `settings` as FILE; returns once it exits."""
    config = tmp_path / "receiver.yaml"
    config.write_text(f"listen: 127.0.0.1:0\nstate_dir: {tmp_path / 'state'}\n{settings}")
    return subprocess.run(
        [sys.executable, "-m", "scanxfer", "receive", "-c", str(config), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused_both_ways(tmp_path: Path, settings: str, message: str) -> None:
    for options in ((), ("--check",)):
        result = receive(tmp_path, settings, *options)
        assert result.returncode == ExitCode.STORAGE, result.stderr
        assert result.stderr.strip().splitlines() == [SAID + message], options


def user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def other_filesystem() -> Iterator[Path]:
    """A folder on another filesystem than the tests' temporary folders: /dev/shm, a tmpfs."""
    path = Path("/dev/shm") / f"scanxfer-test-{uuid.uuid4().hex}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_folder_on_a_disk_not_mounted_is_refused(tmp_path: Path) -> None:
    scans = tmp_path / "usb" / "scans"
    refused_both_ways(
        tmp_path,
        f"incoming_dir: {scans}\n",
        f"cannot store into {scans}: it does not exist, nor does {scans.parent}; is its disk "
        f"mounted? if it is on no disk of its own, make it: sudo mkdir -p {scans} "
        f"&& sudo chown {user()}: {scans}",
    )
    assert not scans.parent.exists()  # not made on the wrong disk


def test_a_partial_folder_on_another_filesystem_is_refused(
    tmp_path: Path, other_filesystem: Path
) -> None:
    assert os.stat("/dev/shm").st_dev != tmp_path.stat().st_dev
    other_filesystem.mkdir()
    incoming = tmp_path / "state" / "incoming"
    refused_both_ways(
        tmp_path,
        f"partial_dir: {other_filesystem}\n",
        f"cannot store files: a file in partial_dir {other_filesystem} cannot be moved into "
        f"{incoming} (Invalid cross-device link: another filesystem, or another mount of the "
        "service's sandbox); leave partial_dir unset, so unfinished files are kept in "
        f"{incoming / PARTIAL_FOLDER}",
    )
    assert not list(other_filesystem.iterdir()) and not list(incoming.iterdir())  # no probe left


def test_too_little_free_space_is_refused(tmp_path: Path) -> None:
    refused = receive(tmp_path, "min_free_space: 1000TiB\n")
    assert refused.returncode == ExitCode.STORAGE
    line = refused.stderr.strip()
    prefix = f"{SAID}cannot store into {tmp_path / 'state' / 'incoming'}: only "
    assert line.startswith(prefix), line
    assert line.endswith(
        " is free on its disk, less than min_free_space (1000.0 TiB); free some space there "
        "or lower min_free_space in the receiver's settings"
    )
    checked = receive(tmp_path, "min_free_space: 1000TiB\n", "--check")
    assert (checked.returncode, checked.stderr.strip()[: len(prefix)]) == (4, prefix)


def test_a_folder_the_service_user_may_not_write_is_refused(open_folder: Path) -> None:
    """As root, `receive --check` checks as the owner of the state folder, the service's user;
    as anyone else, the folder is made read-only to them."""
    tmp_path = open_folder
    scans = tmp_path / "scans"
    scans.mkdir(mode=0o755)
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
        who, owner, runs = "nobody", "root", [("--check",)]
    else:
        scans.chmod(0o555)
        who, owner, runs = user(), user(), [(), ("--check",)]
    for options in runs:
        result = receive(tmp_path, f"incoming_dir: {scans}\n", *options)
        assert result.returncode == ExitCode.STORAGE, result.stderr
        assert result.stderr.strip() == SAID + (
            f"cannot store files: user {who} may not write in {scans} (owner {owner}, mode "
            f"{'0755' if owner == 'root' else '0555'}); give it the folder: "
            f"sudo chown {who}: {scans}"
        )
    assert list(scans.iterdir()) == []


def test_the_check_passes_and_makes_nothing_where_the_receiver_can_store(tmp_path: Path) -> None:
    result = receive(tmp_path, "", "--check")
    incoming = tmp_path / "state" / "incoming"
    assert result.returncode == ExitCode.OK, result.stderr
    assert (
        result.stderr.strip()
        == f"scanxfer: settings are valid, and files can be stored in {incoming}"
    )
    assert not (tmp_path / "state").exists()
