"""`scanxfer send` as a daemon: exactly once across crashes, restarts and slow writers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from scanxfer import protocol as p
from scanxfer.sender.session import EXTENSIONS, FRAME_AUTH
from scanxfer.verify import compare_files

from ..procs import start_scanxfer
from .faultproxy import FaultProxy, Plan
from .harness import (
    ReceiverProcess,
    assert_identical,
    count_matches,
    received_paths,
    seeded_random,
    sender_config,
    sender_status,
    start_sender,
    unused_port,
    wait_for_files,
    wait_until,
    write_big_scan,
    write_run,
    write_scan,
)

# Fast retries and a short stall timeout: failures are exercised without long waits.
DAEMON = {"retry_initial": "0.05s", "retry_max": "0.5s", "stall_timeout": "2s"}
KILLS = 20
# Over bare loopback the whole run takes about a second, so nearly every kill would land after
# it; through a link this slow the run lasts long enough for the kills to be spread across it.
SLOW_LINK = Plan(rate=8e6)


def test_sender_killed_at_20_random_points_delivers_each_file_exactly_once(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    rng = seeded_random()
    scans = tmp_path / "scans"
    expected = write_run(scans)
    with FaultProxy(receiver.port, lambda _: SLOW_LINK) as proxy:
        config = sender_config(tmp_path / "sender.yaml", proxy.port, scans, **DAEMON)
        progress = []
        for _ in range(KILLS):
            sender = start_sender(config)
            # Anywhere from start-up (opening the journal, scanning) to mid-transfer.
            time.sleep(rng.uniform(0.05, 1.5))
            sender.stop(signal.SIGKILL)
            progress.append((len(receiver.stored_files()), proxy.upstream_bytes >> 20))
        print("(files stored, MiB sent) at each kill:", progress)
        sender = start_sender(config)
        # Earlier runs may have finished everything; this one must still be up before SIGTERM.
        sender.wait_for("watching", 60)
        wait_for_files(receiver, expected, sender)
        wait_until(lambda: all_delivered(config, len(expected)), "the journal to agree", sender)
        assert sender.stop() == 0, sender.log
    assert receiver.stored_files() == expected  # no name~1.npy second copies
    assert_identical(scans, receiver.incoming)
    # Each file was written into incoming once; later offers were recognised as duplicates.
    assert sorted(received_paths(receiver.log)) == expected
    assert receiver.partials() == []


def all_delivered(config: Path, count: int) -> bool:
    status = sender_status(config)
    return status["delivered"] == count and status["backlog"]["files"] == 0


def test_receiver_killed_at_20_random_points_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rng = seeded_random()
    scans = tmp_path / "scans"
    expected = write_run(scans)
    receiver = ReceiverProcess(tmp_path / "pi").start()
    proxy = FaultProxy(receiver.port, lambda _: SLOW_LINK)
    config = sender_config(tmp_path / "sender.yaml", proxy.port, scans, **DAEMON)
    sender = start_sender(config)
    logs, progress = [], []
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 1.5))
            receiver.stop(signal.SIGKILL)
            progress.append((len(receiver.stored_files()), proxy.upstream_bytes >> 20))
            logs.append(receiver.log)
            receiver.start()  # same port, same directories
        print("(files stored, MiB sent) at each kill:", progress)
        wait_for_files(receiver, expected, sender)
        assert sender.process.poll() is None, sender.log  # the daemon rode it out
    finally:
        assert sender.stop() == 0, sender.log
        proxy.close()
        logs.append(receiver.log)
        receiver.stop()
    assert receiver.stored_files() == expected
    assert_identical(scans, receiver.incoming)
    assert not any("kept the new file beside" in log for log in logs)


def write_header_and_half(path: Path, shape: tuple[int, ...]) -> Path:
    """A .npy whose writer crashed halfway: a valid header, half the data, closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"descr": "<u2", "fortran_order": False, "shape": shape}
    with path.open("wb") as handle:
        npy_format.write_array_header_1_0(handle, header)
        handle.write(bytes(int(np.prod(shape))))  # 1 byte per 2-byte element: half
    return path


def write_in_sessions(path: Path, shape: tuple[int, ...], pieces: int, pause: float) -> Path:
    """Like a writer that closes and reopens the file between pieces, pausing longer than
    settle_seconds: only the .npy size check can tell the file is not finished."""
    data = np.random.default_rng(7).integers(0, 2**16, size=shape, dtype="<u2").tobytes()
    header = {"descr": "<u2", "fortran_order": False, "shape": shape}
    with path.open("wb") as handle:
        npy_format.write_array_header_1_0(handle, header)
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        time.sleep(pause)
        with path.open("ab") as handle:
            handle.write(data[start : start + step])
    return path


@pytest.mark.parametrize("method", ["inotify", "poll"])
def test_slowly_written_scans_are_never_sent_truncated(
    method: str, tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    crashed = write_header_and_half(scans / "crashed" / "scan.npy", (256, 256))
    config = sender_config(
        tmp_path / "sender.yaml", receiver.port, scans, watch_method=method, **DAEMON
    )
    sender = start_sender(config)
    try:
        sender.wait_for("watching", 60)
        simulate = start_scanxfer(
            "simulate",
            *("simulate", "--dir", str(scans), "--count", "6", "--interval", "0.4"),
            *("--shape", "512x512", "--chunks", "8"),
        )
        write_in_sessions(scans / "reopened.npy", (256, 256), pieces=4, pause=0.5)
        assert simulate.wait(120) == 0, simulate.log
        expected = sorted(
            path.relative_to(scans).as_posix() for path in scans.rglob("*.npy") if path != crashed
        )
        assert len(expected) == 7
        wait_for_files(receiver, expected, sender)
        status = sender_status(config)
    finally:
        assert sender.stop() == 0, sender.log
    # Nothing was stored early and then again: a truncated first copy would have left name~1.npy.
    assert receiver.stored_files() == expected
    for relpath in expected:
        assert compare_files(scans / relpath, receiver.incoming / relpath).identical, relpath
    [entry] = [item for item in status["incomplete"] if item["path"] == "crashed/scan.npy"]
    assert entry["size"] == crashed.stat().st_size
    assert entry["reason"].startswith("not a complete .npy file yet")
    assert status["backlog"]["files"] == 0


def test_a_backlog_built_while_the_receiver_is_down_drains_oldest_first(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    port = unused_port()
    config = sender_config(tmp_path / "sender.yaml", port, scans, **DAEMON)
    sender = start_sender(config)
    receiver = ReceiverProcess(tmp_path / "pi", port=port)
    try:
        sender.wait_for("watching", 60)
        created = []
        base = time.time_ns() - 10**12
        for index in range(500):
            # Names sort the opposite way to creation, so name order cannot pass for age order.
            path = write_scan(scans / f"s{499 - index:03}.npy", (16,), index)
            os.utime(path, ns=(base + index * 10**6, base + index * 10**6))
            created.append(path.name)
        wait_until(lambda: sender_status(config)["backlog"]["files"] == 500, "500 queued", sender)
        receiver.start()
        wait_for_files(receiver, created, sender)
    finally:
        assert sender.stop() == 0, sender.log
        if receiver.child is not None:
            receiver.stop()
    assert received_paths(receiver.log) == created
    assert_identical(scans, receiver.incoming)


def ready_frames(receiver_name: str) -> int:
    """Bytes a plain-TCP receiver sends before its first ACK when one file is offered."""
    challenge = p.encode(p.Challenge(1, bytes(p.NONCE_SIZE)))
    # Echoed: the sender asks for CANCEL and ASK_DIGEST, and on plain TCP for frame tags.
    options = {**EXTENSIONS, **FRAME_AUTH}
    welcome = p.encode(p.Welcome(receiver_name, 64, bytes(p.PROOF_SIZE), 1, options))
    return len(challenge) + len(welcome) + len(p.encode(p.Ready(1, 0))) + p.TAG_SIZE


def test_after_send_delete_waits_for_the_durable_ack(tmp_path: Path) -> None:
    settings = tmp_path / "receiver.yaml"
    # Plain TCP, so the proxy can count the receiver's frames.
    settings.write_text("name: pi\nwindow: 64\ntls: false\n")
    receiver = ReceiverProcess(tmp_path / "pi", config=settings).start()
    scans = tmp_path / "scans"
    source = write_scan(scans / "run" / "scan.npy", (256, 256), 1)
    original = source.read_bytes()
    # The sender hears WELCOME and READY on connection 1, then nothing: the ACK never arrives.
    # Later connections hear nothing at all, until the proxy is healed.
    first = Plan(drop_downstream_after=ready_frames("pi"))
    with FaultProxy(
        receiver.port, lambda n: first if n == 1 else Plan(drop_downstream_after=0)
    ) as proxy:
        config = sender_config(
            tmp_path / "sender.yaml",
            proxy.port,
            scans,
            after_send="delete",
            tls="false",
            **DAEMON,
        )
        sender = start_sender(config)
        try:
            receiver.child.wait_for(r"received run/scan\.npy \(", 60)
            assert proxy.link(1).dropping.wait(30)  # the ACK was sent and swallowed
            receiver.stop(signal.SIGKILL)
            # Let the sender try again a few times: it must still not delete anything.
            seen = proxy.connections
            wait_until(lambda: proxy.connections >= seen + 2, "two more attempts", sender)
            assert source.read_bytes() == original
            assert "deleted" not in sender.log

            receiver.start()
            proxy.plans = ()  # from now on, every connection passes clean
            wait_until(lambda: not source.exists(), "the source to be deleted", sender)
        finally:
            assert sender.stop() == 0, sender.log
            receiver.stop()
    acked = sender.log.index("run/scan.npy is already on the receiver as run/scan.npy")
    assert sender.log.index("deleted run/scan.npy after delivery") > acked
    assert receiver.stored_files() == ["run/scan.npy"]
    assert (receiver.incoming / "run" / "scan.npy").read_bytes() == original


def test_after_send_move_keeps_the_relative_path_under_sent(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    source = write_scan(scans / "day1" / "run2" / "scan.npy", (64, 64), 3)
    original = source.read_bytes()
    config = sender_config(
        tmp_path / "sender.yaml", receiver.port, scans, after_send="move", **DAEMON
    )
    sender = start_sender(config)
    moved = tmp_path / "sent" / "day1" / "run2" / "scan.npy"  # sent_dir null: beside watch_dir
    try:
        wait_until(moved.exists, "the file to move to sent/", sender)
    finally:
        assert sender.stop() == 0, sender.log
    assert not source.exists()
    assert moved.read_bytes() == original
    assert (receiver.incoming / "day1" / "run2" / "scan.npy").read_bytes() == original
    assert f"moved day1/run2/scan.npy to {moved} after delivery" in sender.log


def test_a_restart_skips_delivered_files_and_resends_a_changed_one(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    expected = write_run(scans, small=20, big_mib=0)
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans, **DAEMON)
    first = start_sender(config)
    try:
        wait_for_files(receiver, expected, first)
    finally:
        assert first.stop() == 0, first.log  # SIGTERM: a clean exit
    status = sender_status(config)
    assert (status["delivered"], status["backlog"]["files"], status["failed"]) == (20, 0, [])
    assert status["last_delivered"]["path"] in expected
    before = len(receiver.log)

    second = start_sender(config)
    changed = write_scan(scans / "run3" / "s003.npy", (8192,), seed=1234)
    try:
        wait_for_files(receiver, ["run3/s003~1.npy"], second)
    finally:
        assert second.stop() == 0, second.log
    since_restart = receiver.log[before:]
    assert count_matches(r"duplicate|received |resuming ", since_restart) == 0, since_restart
    assert "kept the new file beside it as run3/s003~1.npy" in since_restart
    assert "run3/s003.npy changed after delivery; sending the new version" in second.log
    assert count_matches(r"already on the receiver", second.log) == 0, second.log
    assert count_matches(r"\bsent \S+ \(", second.log) == 1, second.log
    assert (receiver.incoming / "run3" / "s003~1.npy").read_bytes() == changed.read_bytes()


def test_sigterm_during_a_big_transfer_exits_0_and_a_restart_finishes_it(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    big = write_big_scan(scans / "volume.npy", 100)
    # The proxy freezes the stream at 40 MiB, so the signal lands mid-file every time.
    with FaultProxy(receiver.port, [Plan(stall_after=40 << 20)]) as proxy:
        config = sender_config(tmp_path / "via-proxy.yaml", proxy.port, scans, **DAEMON)
        sender = start_sender(config)
        assert proxy.link(1).stalled.wait(120), sender.log
        assert sender.stop(signal.SIGTERM, timeout=120) == 0, sender.log
    assert receiver.stored_files() == []

    direct = sender_config(tmp_path / "direct.yaml", receiver.port, scans, **DAEMON)
    restarted = start_sender(direct)  # same state_dir: the same journal
    try:
        wait_for_files(receiver, ["volume.npy"], restarted)
    finally:
        assert restarted.stop() == 0, restarted.log
    offset = int(receiver.child.wait_for(r"resuming volume\.npy at (\d+)", 10).group(1))
    assert 0 < offset < 40 << 20  # what connection 1 carried before the stall
    assert compare_files(big, receiver.incoming / "volume.npy").identical
