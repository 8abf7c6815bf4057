"""after_send: a source file is moved or deleted only as the very version delivered, writer-free."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanxfer.config import SenderConfig, load_sender_config
from scanxfer.sender.handoff import after_delivery, finish_interrupted_hand_offs
from scanxfer.watcher import Version


def settings(tmp_path: Path, after_send: str, sent: Path | None = None) -> SenderConfig:
    file = tmp_path / "sender.yaml"
    file.write_text(
        f"watch_dir: {tmp_path / 'scans'}\nsent_dir: {sent or tmp_path / 'sent'}\n"
        f"after_send: {after_send}\nstate_dir: {tmp_path / 'state'}\n"
    )
    return load_sender_config(file)


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    path = tmp_path / "scans" / "run" / "scan.npy"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"scan data")
    return path


@pytest.fixture
def writer(scan: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process with the scan open for writing, until the test ends."""
    code = "import sys; f = open(sys.argv[1], 'r+b'); print('ready', flush=True); input()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(scan)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait()


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.rglob("*scanxfer-*"))


@pytest.mark.parametrize("action", ["delete", "move"])
def test_the_delivered_version_is_handed_off(tmp_path: Path, scan: Path, action: str) -> None:
    assert after_delivery(settings(tmp_path, action), "run/scan.npy", Version.of(scan.stat()))
    assert not scan.exists()
    moved = tmp_path / "sent" / "run" / "scan.npy"
    assert moved.exists() == (action == "move")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("action", ["delete", "move"])
def test_a_file_open_for_writing_is_left_in_place(
    tmp_path: Path, scan: Path, writer: subprocess.Popen[str], action: str
) -> None:
    version = Version.of(scan.stat())
    assert not after_delivery(settings(tmp_path, action), "run/scan.npy", version)
    assert scan.read_bytes() == b"scan data"
    assert not (tmp_path / "sent").exists() or list((tmp_path / "sent").rglob("*.npy")) == []
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("action", ["delete", "move"])
def test_a_file_changed_since_delivery_is_left_in_place(
    tmp_path: Path, scan: Path, action: str
) -> None:
    delivered = Version.of(scan.stat())
    scan.write_bytes(b"scan datb")  # same size
    os.utime(scan, ns=(delivered.mtime_ns, delivered.mtime_ns))  # and the mtime set back
    assert not after_delivery(settings(tmp_path, action), "run/scan.npy", delivered)
    assert scan.read_bytes() == b"scan datb"


def test_a_file_replaced_under_its_name_is_left_in_place(tmp_path: Path, scan: Path) -> None:
    delivered = Version.of(scan.stat())
    replacement = scan.with_name("new.tmp")
    replacement.write_bytes(b"scan data")
    os.utime(replacement, ns=(delivered.mtime_ns, delivered.mtime_ns))
    os.rename(replacement, scan)
    assert not after_delivery(settings(tmp_path, "delete"), "run/scan.npy", delivered)
    assert scan.exists()


def test_keep_and_a_file_already_gone_need_nothing(tmp_path: Path, scan: Path) -> None:
    version = Version.of(scan.stat())
    assert after_delivery(settings(tmp_path, "keep"), "run/scan.npy", version)
    assert scan.exists()
    scan.unlink()
    assert after_delivery(settings(tmp_path, "delete"), "run/scan.npy", version)


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A sent/ on another filesystem than the scans: tmpfs under /dev/shm."""
    shm = Path("/dev/shm")
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("/dev/shm is on the same filesystem as the tests' temporary files")
    sent = Path(tempfile.mkdtemp(dir=shm, prefix="scanxfer-sent-"))
    yield sent
    shutil.rmtree(sent)


def test_a_move_to_another_filesystem_copies_then_deletes(
    tmp_path: Path, scan: Path, other_filesystem: Path
) -> None:
    version = Version.of(scan.stat())
    assert after_delivery(settings(tmp_path, "move", other_filesystem), "run/scan.npy", version)
    moved = other_filesystem / "run" / "scan.npy"
    assert moved.read_bytes() == b"scan data"
    assert moved.stat().st_mtime_ns == version.mtime_ns
    assert not scan.exists()
    assert leftovers(tmp_path) == [] and leftovers(other_filesystem) == []


def test_a_move_to_another_filesystem_leaves_a_file_open_for_writing(
    tmp_path: Path, scan: Path, writer: subprocess.Popen[str], other_filesystem: Path
) -> None:
    version = Version.of(scan.stat())
    assert not after_delivery(settings(tmp_path, "move", other_filesystem), "run/scan.npy", version)
    assert scan.read_bytes() == b"scan data"
    assert list(other_filesystem.rglob("*.npy")) == []
    assert leftovers(other_filesystem) == []


def hide(scan: Path) -> Path:
    """What a sender killed between hiding a scan and unlinking it leaves."""
    hidden = scan.with_name(f".{scan.name}.scanxfer-deleting")
    os.rename(scan, hidden)
    return hidden


def test_an_interrupted_delete_of_the_delivered_scan_is_finished(
    tmp_path: Path, scan: Path
) -> None:
    delivered = Version.of(scan.stat())
    hidden = hide(scan)
    finish_interrupted_hand_offs(settings(tmp_path, "delete"), {"run/scan.npy": delivered}.get)
    assert not hidden.exists() and not scan.exists()


@pytest.mark.parametrize("action", ["keep", "move"])
def test_an_interrupted_delete_is_undone_once_after_send_no_longer_deletes(
    tmp_path: Path, scan: Path, action: str
) -> None:
    delivered = Version.of(scan.stat())
    hide(scan)
    finish_interrupted_hand_offs(settings(tmp_path, action), {"run/scan.npy": delivered}.get)
    assert scan.read_bytes() == b"scan data"
    assert leftovers(tmp_path) == []


def test_a_hidden_scan_the_journal_does_not_know_is_put_back(tmp_path: Path, scan: Path) -> None:
    hide(scan)
    finish_interrupted_hand_offs(settings(tmp_path, "delete"), {}.get)
    assert scan.read_bytes() == b"scan data"
    assert leftovers(tmp_path) == []


def test_a_hidden_scan_a_writer_holds_is_put_back(
    tmp_path: Path, scan: Path, writer: subprocess.Popen[str]
) -> None:
    delivered = Version.of(scan.stat())
    hide(scan)
    finish_interrupted_hand_offs(settings(tmp_path, "delete"), {"run/scan.npy": delivered}.get)
    assert scan.read_bytes() == b"scan data"
    assert leftovers(tmp_path) == []


def test_a_scan_killed_while_being_put_back_keeps_its_name(tmp_path: Path, scan: Path) -> None:
    delivered = Version.of(scan.stat())
    hidden = hide(scan)
    os.link(hidden, scan)  # `_put_back` had linked it back, and not yet unlinked the other
    finish_interrupted_hand_offs(settings(tmp_path, "delete"), {"run/scan.npy": delivered}.get)
    assert scan.read_bytes() == b"scan data"
    assert leftovers(tmp_path) == []


def test_a_copy_left_unfinished_in_sent_is_removed(tmp_path: Path, scan: Path) -> None:
    unfinished = tmp_path / "sent" / "run" / ".scan.npy.scanxfer-copying"
    unfinished.parent.mkdir(parents=True)
    unfinished.write_bytes(b"scan")
    finish_interrupted_hand_offs(settings(tmp_path, "move"), {}.get)
    assert leftovers(tmp_path) == []
    assert scan.read_bytes() == b"scan data"  # the original, which the next move copies again
