"""Both metrics endpoints, scraped during a real transfer: the counters match what moved."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from scanxfer.errors import ExitCode

from ..procs import Proc
from .attack import StartReceiver
from .harness import (
    TEST_SENDER,
    ReceiverProcess,
    install_credentials,
    send_once,
    sender_config,
    start_sender,
    unused_port,
    wait_for_files,
    wait_until,
    write_scan,
)

METRICS_LINE = r"metrics on http://127\.0\.0\.1:(\d+)/metrics"
# A scan of (8192,) uint16 is 16 KiB and a header; max_file_size below refuses the big one.
SMALL, BIG = (8192,), (65536,)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of http://127.0.0.1:PORT/metrics by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metrics_port(process: Proc) -> int:
    return int(process.wait_for(METRICS_LINE, 30).group(1))


def test_counters_match_what_moved_including_a_nack_and_a_duplicate(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver(metrics_listen="127.0.0.1:0", max_file_size="100KB")
    assert receiver.child is not None
    receiver_port = metrics_port(receiver.child)
    scans = tmp_path / "scans"
    small = [write_scan(scans / "run" / f"s{index}.npy", SMALL, index) for index in range(5)]
    write_scan(scans / "too-big.npy", BIG, 99)  # NACK TOO_LARGE, on purpose
    config = sender_config(
        tmp_path / "sender.yaml", receiver.port, scans, metrics_listen="127.0.0.1:0"
    )
    sender = start_sender(config)
    try:
        sender_port = metrics_port(sender)
        names = [path.relative_to(scans).as_posix() for path in small]
        wait_for_files(receiver, names, sender)
        expected_bytes = sum(path.stat().st_size for path in small)
        me = (("sender", TEST_SENDER),)
        wait_until(
            lambda: scrape(sender_port).get(("scanxfer_sender_failed_files_total", me)) == 1,
            "the sender to count the refused file",
            sender,
        )
        duplicate = _offer_again(tmp_path, receiver, small[0], scans)
        _not_tls(receiver.port)
        wait_until(
            lambda: scrape(receiver_port)[("scanxfer_receiver_failed_handshakes_total", ())] == 1,
            "the receiver to count the failed handshake",
            receiver.child,
        )
        sent, received = scrape(sender_port), scrape(receiver_port)
    finally:
        sender.stop()

    assert received[("scanxfer_receiver_received_files_total", me)] == 5
    assert received[("scanxfer_receiver_received_bytes_total", me)] == expected_bytes
    assert received[("scanxfer_receiver_duplicates_total", me)] == 1, duplicate.log
    assert received[("scanxfer_receiver_nacks_total", (("reason", "too_large"),))] == 1
    assert received[("scanxfer_receiver_nacks_total", (("reason", "no_space"),))] == 0
    assert received[("scanxfer_receiver_kept_beside_total", me)] == 0
    assert received[("scanxfer_receiver_failed_handshakes_total", ())] == 1
    assert received[("scanxfer_receiver_group_commit_seconds_count", ())] >= 1
    assert received[("scanxfer_receiver_free_bytes", ())] > 0
    assert received[("scanxfer_receiver_partial_bytes", ())] == 0
    assert received[("scanxfer_receiver_last_received_timestamp_seconds", me)] > 0

    assert sent[("scanxfer_sender_delivered_files_total", me)] == 5
    assert sent[("scanxfer_sender_delivered_bytes_total", me)] == expected_bytes
    assert sent[("scanxfer_sender_failed_files_total", me)] == 1
    assert sent[("scanxfer_sender_retries_total", me)] == 0
    assert sent[("scanxfer_sender_backlog_files", me)] == 0
    assert sent[("scanxfer_sender_backlog_bytes", me)] == 0
    assert sent[("scanxfer_sender_oldest_waiting_seconds", me)] == 0
    assert sent[("scanxfer_sender_close_to_ack_seconds_count", me)] == 5
    assert sent[("scanxfer_sender_last_delivered_timestamp_seconds", me)] > 0
    states = {
        dict(labels)["state"]: value
        for (name, labels), value in sent.items()
        if name == "scanxfer_sender_connection_state"
    }
    assert sum(states.values()) == 1 and set(states) == {"idle", "connected", "retrying", "paused"}


def _not_tls(port: int) -> None:
    """A client that speaks HTTP to the TLS port: a failed handshake, which the receiver ends."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):  # how it may end it
            while sock.recv(4096):
                pass


def _offer_again(tmp_path: Path, receiver: ReceiverProcess, scan: Path, scans: Path) -> Proc:
    """The same file, offered by a sender without its journal: the receiver ACKs DUPLICATE."""
    other = tmp_path / "other" / "scans"
    copy = other / scan.relative_to(scans)
    copy.parent.mkdir(parents=True)
    shutil.copy2(scan, copy)
    config = sender_config(tmp_path / "other" / "sender.yaml", receiver.port, other)
    result = send_once(config)
    assert result.returncode == 0, result.log
    return result


# `scanxfer ARGS` on a machine without prometheus_client: the import fails as a missing
# package's does.
_WITHOUT_PROMETHEUS = """
import sys


class Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "prometheus_client":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hidden())
from scanxfer.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_without_the_library_the_endpoint_refuses_to_start_and_names_the_package(
    tmp_path: Path,
) -> None:
    config = tmp_path / "receiver.yaml"
    config.write_text("metrics_listen: 127.0.0.1:0\n")
    state = tmp_path / "state"
    install_credentials(state)
    argv = ["receive", "-c", str(config), "--listen", "127.0.0.1:0", "--state-dir", str(state)]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PROMETHEUS, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "sudo apt install python3-prometheus-client" in result.stderr
    assert "metrics_listen: null" in result.stderr


def test_a_sender_that_cannot_reach_its_receiver_shows_its_backlog(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    waiting = [write_scan(scans / f"w{index}.npy", SMALL, index) for index in range(3)]
    config = sender_config(
        tmp_path / "sender.yaml", unused_port(), scans, metrics_listen="127.0.0.1:0"
    )
    sender = start_sender(config)
    me = (("sender", TEST_SENDER),)
    try:
        port = metrics_port(sender)
        wait_until(
            lambda: scrape(port).get(("scanxfer_sender_backlog_files", me)) == len(waiting),
            "the backlog in the sender's metrics",
            sender,
        )
        wait_until(
            lambda: (
                scrape(port)[("scanxfer_sender_connection_state", (*me, ("state", "retrying")))]
                == 1
            ),
            "the sender to say it is retrying",
            sender,
        )
        sent = scrape(port)
    finally:
        sender.stop()
    assert sent[("scanxfer_sender_backlog_bytes", me)] == sum(p.stat().st_size for p in waiting)
    assert sent[("scanxfer_sender_oldest_waiting_seconds", me)] > 0
    assert sent[("scanxfer_sender_delivered_files_total", me)] == 0
    assert ("scanxfer_sender_last_delivered_timestamp_seconds", me) not in sent
