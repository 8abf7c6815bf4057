"""A receiver whose disk fills up in the middle of a file, on a real 16 MiB tmpfs.

The offer passes the free-space check, then the disk runs out under the write: the
receiver must answer NO_SPACE, drop the partial, stay up, and take the file as soon as
space is back, while the sender keeps its copy and retries on its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .faultproxy import FaultProxy, Plan
from .harness import (
    GIVE_UP_SECONDS,
    ReceiverProcess,
    count_matches,
    sender_config,
    start_sender,
    wait_for_files,
    wait_until,
    write_big_scan,
)

MIB = 1 << 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs needs root (the tests and CI run as root)"
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 16 MiB tmpfs: a disk that really fills up, with ENOSPC from the kernel."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mountpoint)],
        check=True,
        capture_output=True,
    )
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def fill(path: Path) -> Path:
    """Write zeros into `path` until the filesystem has no block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, bytes(MIB))  # the last one comes back short, the next fails
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return path


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_disk_full_mid_file_is_refused_and_the_file_arrives_once_space_is_back(
    tmp_path: Path, small_disk: Path
) -> None:
    settings = tmp_path / "receiver.yaml"
    settings.write_text("min_free_space: 0\nidle_timeout: 30s\n")
    receiver = ReceiverProcess(small_disk, config=settings)  # incoming and partials on the tmpfs
    scans = tmp_path / "scans"
    scan = write_big_scan(scans / "volume.npy", 6)
    original = scan.read_bytes()
    with contextlib.ExitStack() as cleanup:
        receiver.start()
        cleanup.callback(receiver.stop)
        assert free_bytes(small_disk) > len(original) + MIB  # so the offer is accepted
        # The first connection freezes half-way, so the disk can be filled under the transfer.
        stall = Plan(stall_after=3 * MIB, stall_downstream=False)
        proxy = cleanup.enter_context(FaultProxy(receiver.port, [stall]))
        config = sender_config(tmp_path / "sender.yaml", proxy.port, scans, after_send="delete")
        sender = start_sender(config)
        cleanup.callback(sender.stop)
        assert proxy.link(1).stalled.wait(GIVE_UP_SECONDS), sender.log
        wait_until(lambda: partial_bytes(receiver) >= 2 * MIB, "the partial", receiver.child)
        filler = fill(small_disk / "filler")
        proxy.release()

        # Refused mid-file, then at each offer, until space is back.
        sender.wait_for(r"receiver has no space for volume\.npy", GIVE_UP_SECONDS)
        assert receiver.child is not None
        receiver.child.wait_for(r"cannot store volume\.npy: no space left", GIVE_UP_SECONDS)
        receiver.child.wait_for(r"refused 'volume\.npy': .* do not fit", GIVE_UP_SECONDS)
        assert list((receiver.state / "partial").iterdir()) == []
        assert list(small_disk.rglob("*.part")) == []
        assert receiver.stored_files() == []
        assert scan.read_bytes() == original  # after_send: delete, yet the sender keeps it
        assert receiver.child.process.poll() is None and sender.process.poll() is None

        filler.unlink()
        wait_for_files(receiver, ["volume.npy"], sender)
        assert (receiver.incoming / "volume.npy").read_bytes() == original
        wait_until(lambda: not scan.exists(), "the delivered scan deleted", sender)
        assert list((receiver.state / "partial").iterdir()) == []
        # Nothing was restarted: the same two processes did it all.
        assert receiver.child.process.poll() is None and sender.process.poll() is None
        assert count_matches("listening on", receiver.log) == 1


def partial_bytes(receiver: ReceiverProcess) -> int:
    return sum(path.stat().st_size for path in receiver.partials())
