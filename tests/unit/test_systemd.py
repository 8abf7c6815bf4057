"""sd_notify over a real datagram socket, and log prefixes as journald and a terminal see them."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import scanxfer
from scanxfer.systemd import Notifier, setup_logging, stderr_is_journal

log = logging.getLogger("scanxfer.test")


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A socket standing in for systemd's, named by NOTIFY_SOCKET as systemd does."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_without_notify_socket_every_call_does_nothing() -> None:
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready()
    notifier.reloading()
    notifier.status("idle")
    notifier.watchdog()
    notifier.stopping()


def test_messages_arrive_in_order(notify_socket: socket.socket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()
    received = [notify_socket.recv(4096) for _ in range(3)]
    assert received == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_reloading_carries_a_monotonic_timestamp(notify_socket: socket.socket) -> None:
    Notifier().reloading()
    first, second = notify_socket.recv(4096).split(b"\n")
    assert first == b"RELOADING=1"
    name, _, value = second.partition(b"=")
    assert name == b"MONOTONIC_USEC"
    assert value.isdigit()


def test_status_is_one_line_of_utf8(notify_socket: socket.socket) -> None:
    Notifier().status("receiving sc\u00e4n_\u00b5.npy\nfrom pi")
    assert notify_socket.recv(4096) == "STATUS=receiving sc\u00e4n_\u00b5.npy from pi".encode()


def test_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"scanxfer-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().ready()
        assert sock.recv(4096) == b"READY=1"


def test_unreachable_notify_socket_warns_and_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready()
    assert "cannot reach systemd's notification socket" in caplog.text


def test_send_failure_is_logged_not_raised(
    notify_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier()
    notify_socket.close()  # systemd's end goes away: the next send is refused
    notifier.status("still here")
    assert "cannot notify systemd (STATUS=still here)" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "1", None),
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, interval: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert Notifier().watchdog_interval() == interval


# --- logging ----------------------------------------------------------------------------------


def _log_everything() -> None:
    log.debug("details")
    log.info("listening on 0.0.0.0:5000")
    log.warning("disk almost full\nsecond line")
    log.error("cannot write")


@pytest.mark.parametrize(
    ("verbosity", "expected"),
    [
        (
            0,
            "scanxfer: listening on 0.0.0.0:5000\n"
            "scanxfer: warning: disk almost full\n"
            "scanxfer: warning: second line\n"
            "scanxfer: error: cannot write\n",
        ),
        (
            2,
            "scanxfer: debug: details\n"
            "scanxfer: listening on 0.0.0.0:5000\n"
            "scanxfer: warning: disk almost full\n"
            "scanxfer: warning: second line\n"
            "scanxfer: error: cannot write\n",
        ),
        (
            -1,
            "scanxfer: warning: disk almost full\n"
            "scanxfer: warning: second line\n"
            "scanxfer: error: cannot write\n",
        ),
    ],
)
def test_terminal_format(capsys: pytest.CaptureFixture[str], verbosity: int, expected: str) -> None:
    setup_logging(verbosity)
    _log_everything()
    assert capsys.readouterr().err == expected


def test_setup_twice_does_not_duplicate_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(0)
    setup_logging(0)
    log.info("once")
    assert capsys.readouterr().err == "scanxfer: once\n"


def test_traceback_lines_keep_the_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(0)
    try:
        raise OSError("disk gone")
    except OSError:
        log.exception("store failed")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "scanxfer: error: store failed"
    assert lines[-1] == "scanxfer: error: OSError: disk gone"
    assert all(line.startswith("scanxfer: error: ") for line in lines)


_CHILD = """
import logging
from scanxfer.systemd import setup_logging, stderr_is_journal
setup_logging(1)
logging.getLogger("scanxfer.child").info("journal=%s", stderr_is_journal())
logging.getLogger("scanxfer.child").debug("details")
logging.getLogger("scanxfer.child").warning("disk almost full\\nsecond line")
logging.getLogger("scanxfer.child").error("cannot write")
"""


def _run_child_with_stderr_file(tmp_path: Path, journal_stream: str | None) -> str:
    """Run a process whose stderr is a real file, as journald's stream is a real socket."""
    log_file = tmp_path / "stderr.txt"
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    with log_file.open("wb") as stderr:
        stat = os.fstat(stderr.fileno())
        if journal_stream == "same":
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        elif journal_stream == "other":
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino + 1}"
        subprocess.run(
            [sys.executable, "-c", _CHILD],
            stderr=stderr,
            env=env,
            cwd=Path(scanxfer.__file__).parents[1],
            check=True,
            timeout=60,
        )
    return log_file.read_text()


def test_journald_gets_syslog_priorities(tmp_path: Path) -> None:
    assert _run_child_with_stderr_file(tmp_path, "same") == (
        "<6>journal=True\n<7>details\n<4>disk almost full\n<4>second line\n<3>cannot write\n"
    )


@pytest.mark.parametrize("journal_stream", ["other", None])
def test_inherited_journal_stream_of_another_file_is_ignored(
    tmp_path: Path, journal_stream: str | None
) -> None:
    assert _run_child_with_stderr_file(tmp_path, journal_stream) == (
        "scanxfer: journal=False\n"
        "scanxfer: debug: details\n"
        "scanxfer: warning: disk almost full\n"
        "scanxfer: warning: second line\n"
        "scanxfer: error: cannot write\n"
    )


def test_stderr_without_a_descriptor_is_not_the_journal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    assert not stderr_is_journal()  # capsys' stderr has no fileno(): must not raise
