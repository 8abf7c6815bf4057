"""The sender daemon feeds systemd's watchdog while one big file is on its way.

No timing is asserted: each WATCHDOG=1 is matched with how much of the file the receiver
held when it arrived, and pings must come while the file is half there, not only before
and after (a single blocking sendfile would be silent all through it).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from .faultproxy import FaultProxy, Plan
from .harness import (
    ReceiverProcess,
    sender_config,
    start_sender,
    wait_for_files,
    wait_until,
    write_big_scan,
)

SIZE_MIB = 48


class WatchdogLog:
    """A NOTIFY_SOCKET that notes, for each WATCHDOG=1, what `progress()` said then."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.pings: list[int] = []
        self.ready = False

    def drain(self, progress: Callable[[], int]) -> None:
        while True:
            try:
                lines = self.sock.recv(4096).decode().splitlines()
            except TimeoutError:
                return
            self.ready |= "READY=1" in lines
            if "WATCHDOG=1" in lines:
                self.pings.append(progress())


@pytest.mark.parametrize("tls", ["true", "false"])  # sendfile in slices; TLS in chunks
def test_a_long_transfer_keeps_the_watchdog_fed(
    tmp_path: Path, tls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tmp_path / "receiver.yaml"
    settings.write_text(f"tls: {tls}\n")
    receiver = ReceiverProcess(tmp_path / "pi", config=settings).start()
    # Set only now, so that the sender alone talks to it.
    notify = WatchdogLog(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    scans = tmp_path / "scans"
    total = write_big_scan(scans / "big.npy", SIZE_MIB).stat().st_size

    def held() -> int:
        return sum(part.stat().st_size for part in receiver.partials())

    # 48 MiB at 8 MB/s: the file is on its way for several seconds, pings come every second.
    with FaultProxy(receiver.port, [Plan(rate=8e6)]) as proxy:
        config = sender_config(
            tmp_path / "sender.yaml", proxy.port, scans, stall_timeout="30s", tls=tls
        )
        sender = start_sender(config)
        try:
            wait_until(lambda: notify.drain(held) or bool(receiver.stored_files()), "delivery")
            wait_for_files(receiver, ["big.npy"], sender)
        finally:
            assert sender.stop() == 0, sender.log
            receiver.stop()
            notify.sock.close()
    assert notify.ready
    # The middle of the transfer, while the sender is still pushing bytes (its socket buffer
    # holds at most a few MiB of the tail).
    middle = {size for size in notify.pings if total // 10 < size < total * 3 // 4}
    assert len(middle) >= 3, notify.pings
