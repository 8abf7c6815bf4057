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

from scanxfer import protocol as p
from scanxfer.store import PARTIAL_FOLDER

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
from .rawclient import RawSender

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
        assert list((receiver.incoming / PARTIAL_FOLDER).iterdir()) == []
        assert list(small_disk.rglob("*.part")) == []
        assert receiver.stored_files() == []
        assert scan.read_bytes() == original  # after_send: delete, yet the sender keeps it
        assert receiver.child.process.poll() is None and sender.process.poll() is None

        filler.unlink()
        wait_for_files(receiver, ["volume.npy"], sender)
        assert (receiver.incoming / "volume.npy").read_bytes() == original
        wait_until(lambda: not scan.exists(), "the delivered scan deleted", sender)
        assert list((receiver.incoming / PARTIAL_FOLDER).iterdir()) == []
        # Nothing was restarted: the same two processes did it all.
        assert receiver.child.process.poll() is None and sender.process.poll() is None
        assert count_matches("listening on", receiver.log) == 1


def test_three_scans_in_flight_never_take_free_space_below_min_free_space(
    tmp_path: Path, small_disk: Path
) -> None:
    # Each offer alone fits the 64 MiB disk with 16 MiB to spare; all three together do not.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    settings = tmp_path / "receiver.yaml"
    settings.write_text("min_free_space: 16MiB\nidle_timeout: 30s\n")
    receiver = ReceiverProcess(small_disk, config=settings)
    scans = {name: os.urandom(20 * MIB) for name in ("a.npy", "b.npy", "c.npy")}
    with contextlib.ExitStack() as cleanup:
        receiver.start()
        cleanup.callback(receiver.stop)
        clients = [RawSender(receiver.port, source=f"127.0.0.{n}") for n in (2, 3, 4)]
        for client in clients:
            cleanup.callback(client.close)
        readies = []
        for client, (name, payload) in zip(clients[:2], scans.items(), strict=False):
            client.offer(name, payload)
            readies.append(client.next_event())
        assert all(isinstance(ready, p.Ready) for ready in readies), readies
        clients[2].offer("c.npy", scans["c.npy"])
        refusal = clients[2].next_event()
        assert isinstance(refusal, p.Nack) and refusal.reason is p.NackReason.NO_SPACE, refusal
        assert "40.0 MiB promised to files in flight" in refusal.message
        for client, ready, payload in zip(clients, readies, scans.values(), strict=False):
            assert isinstance(ready, p.Ready)
            client.stream(ready, payload)
        for client in clients[:2]:
            answer = client.next_event()
            assert isinstance(answer, p.Ack) and answer.outcome is p.Outcome.STORED, answer
        assert receiver.stored_files() == ["a.npy", "b.npy"]
        assert free_bytes(small_disk) >= 16 * MIB


def partial_bytes(receiver: ReceiverProcess) -> int:
    return sum(path.stat().st_size for path in receiver.partials())
