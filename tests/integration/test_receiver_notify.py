"""The receiver talks to systemd: a real NOTIFY_SOCKET, as systemd provides it."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import ReceiverProcess, send_once, sender_config, write_scan


class NotifySocket:
    """The datagram socket systemd listens on, collecting what the service says."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 30) -> str:
        """The first message line starting with `prefix`, reading more as needed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                for line in message.splitlines():
                    if line.startswith(prefix):
                        return line
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise AssertionError(f"no {prefix!r} in {self.messages}")


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    yield listener
    listener.sock.close()


def test_ready_status_reload_and_stopping_reach_systemd(
    tmp_path: Path, notify: NotifySocket
) -> None:
    receiver = ReceiverProcess(tmp_path / "pi").start()
    try:
        notify.wait_for("READY=1")
        scans = tmp_path / "scans"
        write_scan(scans / "a.npy", (16, 16), seed=1)
        assert send_once(sender_config(tmp_path / "s.yaml", receiver.port, scans)).wait() == 0
        assert "last a.npy" in notify.wait_for("STATUS=1 file,")
        notify.messages.clear()
        receiver.child.process.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
    finally:
        assert receiver.stop() == 0
    notify.wait_for("STOPPING=1")
