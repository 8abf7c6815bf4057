"""`send --once` on a terminal: the bar moves through a big file, and a summary closes the run.

The sender runs under a pseudo-terminal, as under a person's shell, and sends through a relay
that slows the link, so a 64 MiB file takes seconds and the bar is drawn many times meanwhile.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from scanxfer.errors import ExitCode
from scanxfer.sender.progress import CLEAR_LINE

from .faultproxy import FaultProxy, Plan
from .harness import GIVE_UP_SECONDS, ReceiverProcess, sender_config, write_big_scan

SIZE_MIB = 64
RATE = 16_000_000  # about 4 s for the file
BAR = re.compile(r"^(\d+)/(\d+) files  (\d+(?:\.\d)? \w+)/(\d+(?:\.\d)? \w+)")
SUMMARY = re.compile(r"1 of 1 files delivered \(64\.0 MiB\) in \d+:\d\d; [\d.]+ MiB sent at")


def send_on_a_terminal(config: Path, *options: str) -> tuple[int, str]:
    """`scanxfer send --once` with its stderr on a pseudo-terminal; its status and output."""
    controller, terminal = pty.openpty()
    env = {key: value for key, value in os.environ.items() if key != "INVOCATION_ID"}
    child = subprocess.Popen(
        [sys.executable, "-m", "scanxfer", *options, "send", "-c", str(config), "--once"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + GIVE_UP_SECONDS
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(controller, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        return child.wait(60), output.decode()
    finally:
        child.kill()
        child.wait()
        os.close(controller)


def bar_lines(output: str) -> list[re.Match[str]]:
    pieces = re.split(r"\r\n|\r|\n", output.replace(CLEAR_LINE, "\r"))
    return [match for piece in pieces if (match := BAR.match(piece))]


def test_the_bar_moves_during_a_big_file_and_a_summary_ends_the_run(
    tmp_path: Path, receiver: ReceiverProcess
) -> None:
    scans = tmp_path / "scans"
    write_big_scan(scans / "big.npy", SIZE_MIB)
    with FaultProxy(receiver.port, [Plan(rate=RATE)]) as relay:
        config = sender_config(tmp_path / "sender.yaml", relay.port, scans)
        status, output = send_on_a_terminal(config)
    assert status == ExitCode.OK, output
    # Before the file is answered (0/1 files), the bar shows its bytes going out.
    during = {match[3] for match in bar_lines(output) if match[1] == "0"}
    assert len(during - {"0 B"}) >= 3, output
    assert SUMMARY.search(output), output


def test_quiet_shows_neither_bar_nor_summary(tmp_path: Path, receiver: ReceiverProcess) -> None:
    scans = tmp_path / "scans"
    write_big_scan(scans / "big.npy", SIZE_MIB)
    with FaultProxy(receiver.port, [Plan(rate=RATE)]) as relay:
        config = sender_config(tmp_path / "sender.yaml", relay.port, scans)
        status, output = send_on_a_terminal(config, "-q")
    assert status == ExitCode.OK, output
    assert bar_lines(output) == []
    assert not SUMMARY.search(output)
    assert output.strip() == ""
