"""`make demo`: the whole pipeline on loopback, as a new user first sees it.

Starts a receiver and a watching sender as real processes, lets `simulate`
write scans the way an instrument does, waits until every scan is stored, then
runs `verify` and exits with its verdict.  Everything lands under ./demo/.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

DEMO_DIR = Path("demo")
SCAN_COUNT = 12
WAIT_SECONDS = 120


class _Child:
    """A scanxfer subprocess whose log lines are echoed with a prefix and kept for searching.

    Just what the demo needs; the tests and the benchmark have their own (tests/procs.py).
    """

    def __init__(self, label: str, *args: str) -> None:
        self.label = label
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scanxfer", *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            print(f"[{self.label:>9}] {line}", end="", flush=True)
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first log line matching `pattern`; raises if the process dies or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.label} never logged {pattern!r}:\n{''.join(self.lines)}"
                    )
                self.changed.wait(0.2)

    def wait(self) -> int:
        """Reap the process, and let its last log lines through; its exit code."""
        code = self.process.wait()
        self._reader.join(timeout=10)
        return code

    def stop(self) -> int:
        """SIGTERM, the daemons' clean stop; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return self.wait()


def _pair_sender(path: Path, port: int) -> None:
    """The two commands a user types to let a sender in: `keys add` on the receiver, `pair`."""
    path.write_text(
        f"watch_dir: {DEMO_DIR / 'scans'}\n"
        f"state_dir: {DEMO_DIR / 'sender-state'}\n"
        "settle_seconds: 0.5s\n"
    )
    keys_add = ["keys", "add", "demo-pc", "--state-dir", str(DEMO_DIR / "state")]
    issued = subprocess.run(
        [sys.executable, "-m", "scanxfer", *keys_add, "--address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    line = issued.stdout.strip()
    subprocess.run([sys.executable, "-m", "scanxfer", "pair", line, "-c", str(path)], check=True)


def _wait_until_stored(receiver: _Child, count: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while sum("received " in line for line in receiver.lines) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all {count} scans arrived within {WAIT_SECONDS} s")
        time.sleep(0.2)


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    # The instrument's folder exists before the sender watches it: the service never makes one.
    (DEMO_DIR / "scans").mkdir(parents=True)
    receiver = _Child(
        "receiver",
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--dir",
        str(DEMO_DIR / "incoming"),
        "--state-dir",
        str(DEMO_DIR / "state"),
    )
    sender: _Child | None = None
    try:
        port = int(receiver.wait_for(r"listening on \S+:(\d+)", 30).group(1))
        config = DEMO_DIR / "sender.yaml"
        _pair_sender(config, port)
        sender = _Child("sender", "send", "-c", str(config))
        sender.wait_for("watching", 30)
        scans = str(DEMO_DIR / "scans")
        simulate = _Child(
            "simulate", "simulate", "--dir", scans, "--count", str(SCAN_COUNT), "--interval", "0.3"
        )
        if simulate.wait() != 0:
            raise RuntimeError("simulate failed")
        _wait_until_stored(receiver, SCAN_COUNT)
    finally:
        if sender is not None:
            sender.stop()
        receiver.stop()
    print(f"\nverifying {DEMO_DIR / 'scans'} against {DEMO_DIR / 'incoming'}:", flush=True)
    return subprocess.call(
        [
            sys.executable,
            "-m",
            "scanxfer",
            "verify",
            "--source",
            str(DEMO_DIR / "scans"),
            "--dest",
            str(DEMO_DIR / "incoming"),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
