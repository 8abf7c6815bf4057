"""The power-cut file system itself: what survives a cut is exactly what was made durable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .mount import PowerCutMount, powercut_mount


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[PowerCutMount]:
    with powercut_mount(tmp_path) as mounted:
        (mounted.live / "old").write_bytes(b"durable")  # there before the mount: durable
        mounted.mount()
        yield mounted


def power_cut(fs: PowerCutMount) -> Path:
    """Cut and return the surviving tree."""
    fs.freeze()
    fs.cut()
    return fs.live


def write(path: Path, data: bytes, sync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_write_never_synced_is_lost(fs: PowerCutMount) -> None:
    with (fs.mnt / "old").open("ab") as file:
        file.write(b" and more")
    assert (fs.mnt / "old").read_bytes() == b"durable and more"  # the live tree reads it
    assert (power_cut(fs) / "old").read_bytes() == b"durable"


def test_fsync_and_fdatasync_keep_the_data(fs: PowerCutMount) -> None:
    with (fs.mnt / "old").open("ab") as file:
        file.write(b"+1")
        file.flush()
        os.fdatasync(file.fileno())
        file.write(b"+2")
    assert (power_cut(fs) / "old").read_bytes() == b"durable+1"


def test_a_new_file_needs_its_directory_synced(fs: PowerCutMount) -> None:
    write(fs.mnt / "unlisted", b"data", sync=True)
    (fs.mnt / "sub").mkdir()
    survivor = power_cut(fs)
    assert sorted(os.listdir(survivor)) == ["old"]


def test_a_listed_file_without_fsync_comes_back_empty(fs: PowerCutMount) -> None:
    write(fs.mnt / "listed", b"data")
    write(fs.mnt / "whole", b"data", sync=True)
    sync_dir(fs.mnt)
    survivor = power_cut(fs)
    assert (survivor / "listed").read_bytes() == b""
    assert (survivor / "whole").read_bytes() == b"data"


def test_a_rename_is_durable_with_its_directory(fs: PowerCutMount) -> None:
    write(fs.mnt / "tmp", b"new", sync=True)
    sync_dir(fs.mnt)
    os.rename(fs.mnt / "tmp", fs.mnt / "old")
    write(fs.mnt / "tmp2", b"newer", sync=True)
    os.rename(fs.mnt / "tmp2", fs.mnt / "other")
    sync_dir(fs.mnt)
    os.rename(fs.mnt / "other", fs.mnt / "later")  # not synced: undone by the cut
    survivor = power_cut(fs)
    assert sorted(os.listdir(survivor)) == ["old", "other"]
    assert (survivor / "old").read_bytes() == b"new"
    assert (survivor / "other").read_bytes() == b"newer"


def test_a_durable_rename_keeps_the_old_durable_data(fs: PowerCutMount) -> None:
    with (fs.mnt / "old").open("ab") as file:
        file.write(b" not synced")
    os.rename(fs.mnt / "old", fs.mnt / "renamed")
    sync_dir(fs.mnt)
    survivor = power_cut(fs)
    assert os.listdir(survivor) == ["renamed"]
    assert (survivor / "renamed").read_bytes() == b"durable"


def test_a_rename_across_directories_is_atomic(fs: PowerCutMount) -> None:
    (fs.mnt / "sent").mkdir()
    sync_dir(fs.mnt)
    os.rename(fs.mnt / "old", fs.mnt / "sent" / "old")
    sync_dir(fs.mnt)  # the source side only: the target side comes with it
    survivor = power_cut(fs)
    assert os.listdir(survivor) == ["sent"]
    assert (survivor / "sent" / "old").read_bytes() == b"durable"


def test_link_then_unlink_as_the_store_places_a_file(fs: PowerCutMount) -> None:
    (fs.mnt / "partial").mkdir()
    write(fs.mnt / "partial" / "key.part", b"scan", sync=True)
    os.link(fs.mnt / "partial" / "key.part", fs.mnt / "final")
    os.unlink(fs.mnt / "partial" / "key.part")
    sync_dir(fs.mnt)
    survivor = power_cut(fs)
    assert sorted(os.listdir(survivor)) == ["final", "old", "partial"]
    assert (survivor / "final").read_bytes() == b"scan"
    assert os.listdir(survivor / "partial") == []


def test_the_mount_lists_what_the_live_tree_holds(fs: PowerCutMount) -> None:
    (fs.mnt / "sub").mkdir()
    write(fs.mnt / "sub" / "new", b"x")
    assert sorted(os.listdir(fs.mnt)) == ["old", "sub"]
    assert [entry.name for entry in os.scandir(fs.mnt / "sub")] == ["new"]


def test_hard_links_survive_as_one_file(fs: PowerCutMount) -> None:
    os.link(fs.mnt / "old", fs.mnt / "twin")
    sync_dir(fs.mnt)
    survivor = power_cut(fs)
    assert os.stat(survivor / "twin").st_ino == os.stat(survivor / "old").st_ino


def test_an_unlink_never_synced_is_undone(fs: PowerCutMount) -> None:
    os.unlink(fs.mnt / "old")
    write(fs.mnt / "reuses-the-inode", b"x", sync=True)
    survivor = power_cut(fs)
    assert os.listdir(survivor) == ["old"]
    assert (survivor / "old").read_bytes() == b"durable"


SYNCFS_AFTER_WRITE = """
import ctypes, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"synced")
assert ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0
"""


def test_syncfs_reaches_the_model_through_strace(fs: PowerCutMount) -> None:
    argv = [sys.executable, "-c", SYNCFS_AFTER_WRITE, str(fs.mnt / "by-syncfs")]
    subprocess.run(fs.traced(argv), check=True, timeout=60)
    os.stat(fs.mnt)  # one more request: the daemon reads the FIFO before it
    survivor = power_cut(fs)
    assert (survivor / "by-syncfs").read_bytes() == b"synced"


def test_syncfs_untraced_does_not_reach_the_daemon(fs: PowerCutMount) -> None:
    """The kernel sends FUSE_SYNCFS to virtiofs only: untraced, a syncfs makes nothing durable."""
    argv = [sys.executable, "-c", SYNCFS_AFTER_WRITE, str(fs.mnt / "by-syncfs")]
    subprocess.run(argv, check=True, timeout=60)
    survivor = power_cut(fs)
    assert os.listdir(survivor) == ["old"]


def test_a_freeze_on_an_operation_stops_before_it(tmp_path: Path) -> None:
    with powercut_mount(tmp_path) as fs:
        (fs.live / "old").write_bytes(b"durable")
        fs.mount(freeze_at=1, freeze_on="rename")
        renamer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, sys; os.rename(sys.argv[1], sys.argv[2])",
                str(fs.mnt / "old"),
                str(fs.mnt / "new"),
            ],
            stderr=subprocess.DEVNULL,  # its rename fails when the cut ends the mount
        )
        try:
            assert fs.poll_frozen(timeout=60)
            assert fs.frozen_before == "rename"
            fs.cut()
        finally:
            renamer.kill()
            renamer.wait(60)
        assert os.listdir(fs.live) == ["old"]
