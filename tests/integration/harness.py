"""Real scanxfer processes on loopback: a receiver, senders (--once or daemon), scan files."""

from __future__ import annotations

import atexit
import functools
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanxfer.keys import KEYS_FILE_NAME, KeyFile
from scanxfer.store import PARTIAL_FOLDER
from scanxfer.tls import ensure_identity
from scanxfer.verify import verify_trees

from ..procs import Proc, start_scanxfer

REPO = Path(__file__).resolve().parents[2]  # where `python -m tests...` finds the tests

# "Give up" bound for waits that normally end in seconds; never an assertion about speed.
GIVE_UP_SECONDS = 180
TEST_SENDER = "test-sender"


@dataclass(frozen=True)
class Credentials:
    """A receiver identity and one sender key, made once and installed into every test receiver."""

    source: Path  # holds keys.json and tls/, laid out like a receiver's state_dir
    secret: str
    fingerprint: str


@functools.cache
def credentials() -> Credentials:
    """Issued with the real `KeyFile` and `ensure_identity`; shared so each test stays quick."""
    source = Path(tempfile.mkdtemp(prefix="scanxfer-credentials-"))
    atexit.register(shutil.rmtree, source, ignore_errors=True)
    secret = KeyFile(source / KEYS_FILE_NAME).add(TEST_SENDER)
    fingerprint = ensure_identity(source, "test receiver").fingerprint
    return Credentials(source, secret, fingerprint)


def install_credentials(state_dir: Path) -> None:
    """Give a receiver's state_dir the shared certificate and the test sender's key."""
    state_dir.mkdir(parents=True, exist_ok=True)
    source = credentials().source
    shutil.copy2(source / KEYS_FILE_NAME, state_dir / KEYS_FILE_NAME)
    shutil.copytree(source / "tls", state_dir / "tls", dirs_exist_ok=True)


class ReceiverProcess:
    """`scanxfer receive` on 127.0.0.1 with its directories under one root."""

    def __init__(
        self,
        root: Path,
        port: int = 0,
        config: Path | None = None,
        program: str = "scanxfer",
        host: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self.host = f"[{host}]" if ":" in host else host  # where it listens
        self.config = config
        self.program = program  # the module `python -m` runs: scanxfer, or a test's driver of it
        self.incoming = root / "incoming"
        self.state = root / "state"
        self.port = port
        self.child: Proc | None = None
        install_credentials(self.state)

    def start(self) -> ReceiverProcess:
        config = ["-c", str(self.config)] if self.config else []
        places = ["--dir", str(self.incoming), "--state-dir", str(self.state)]
        listen = ["--listen", f"{self.host}:{self.port}"]
        argv = [sys.executable, "-m", self.program, "receive", *config, *listen, *places]
        self.child = Proc("receiver", argv, cwd=REPO)
        self.port = int(self.child.wait_for(r"listening on \S+:(\d+)", 30).group(1))
        return self

    @property
    def log(self) -> str:
        return self.child.log if self.child else ""

    def partials(self) -> list[Path]:
        return sorted((self.incoming / PARTIAL_FOLDER).glob("*.part"))

    def stored_files(self) -> list[str]:
        return sorted(
            path.relative_to(self.incoming).as_posix()
            for path in self.incoming.rglob("*")
            if path.is_file() and PARTIAL_FOLDER not in path.relative_to(self.incoming).parts
        )

    def stop(self, sig: int = 15) -> int:
        assert self.child is not None
        return self.child.stop(sig)


def sender_config(path: Path, port: int, watch: Path, **extra: str) -> Path:
    """A sender.yaml with fast retries, so tests exercise failures without waiting long.

    It carries the shared test credentials, which every ReceiverProcess accepts.
    """
    settings = {
        "receiver": f"127.0.0.1:{port}",
        "name": TEST_SENDER,
        "key": credentials().secret,
        "fingerprint": credentials().fingerprint,
        "watch_dir": str(watch),
        "state_dir": str(path.parent / "sender-state"),
        "retry_initial": "0.05s",
        "retry_max": "0.2s",
        "settle_seconds": "0.2s",
        **extra,
    }
    path.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
    return path


def send_once_in_background(config: Path) -> Proc:
    return start_scanxfer("sender", "send", "-c", str(config), "--once")


def send_once(config: Path, timeout: float = 600) -> Proc:
    sender = send_once_in_background(config)
    sender.wait(timeout)
    return sender


def write_scan(path: Path, shape: tuple[int, ...], seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 2**16, size=shape, dtype=np.uint16)
    np.save(path, data)
    return path


def write_big_scan(path: Path, size_mib: int) -> Path:
    """A valid .npy of about `size_mib` MiB, written in slices so the test stays small in RAM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = size_mib * 256  # 256 rows of 2048 uint16 = 1 MiB
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(rows, 2048))
    rng = np.random.default_rng(size_mib)
    for start in range(0, rows, 4096):
        block = array[start : start + 4096]
        block[:] = rng.integers(0, 2**16, size=block.shape, dtype=np.uint16)
    array.flush()
    del array
    return path


def count_matches(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, flags=re.MULTILINE))


def start_sender(config: Path) -> Proc:
    """`scanxfer send -c CONFIG` as a daemon: it watches until stopped."""
    return start_scanxfer("sender", "send", "-c", str(config))


def sender_status(config: Path) -> dict[str, Any]:
    """`scanxfer status --json -c CONFIG`, parsed."""
    result = subprocess.run(
        [sys.executable, "-m", "scanxfer", "status", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"status failed ({result.returncode}):\n{result.stderr}"
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def unused_port() -> int:
    """A loopback port nothing listens on (yet): for a receiver that starts later."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
    return port


def seeded_random() -> random.Random:
    """A random source whose seed is printed (shown by pytest on failure) and can be replayed."""
    seed = int(os.environ.get("SCANXFER_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"random seed {seed}; rerun with SCANXFER_TEST_SEED={seed} to repeat it")
    return random.Random(seed)


def write_run(scans: Path, small: int = 300, big_mib: int = 100) -> list[str]:
    """`small` nested 16 KiB scans plus one `big_mib` MiB scan; their relative paths, sorted."""
    for index in range(small):
        write_scan(scans / f"run{index % 5}" / f"s{index:03}.npy", (8192,), index)
    if big_mib:
        write_big_scan(scans / "big" / "volume.npy", big_mib)
    return sorted(path.relative_to(scans).as_posix() for path in scans.rglob("*.npy"))


def wait_until(condition: Callable[[], bool], what: str, *children: Proc | None) -> None:
    """Poll `condition` until it holds; give up after GIVE_UP_SECONDS, showing the logs."""
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.label}:\n{c.log}" for c in children if c is not None)
            raise AssertionError(f"gave up waiting for {what}\n{logs}")
        time.sleep(0.1)


def wait_for_files(receiver: ReceiverProcess, expected: Iterable[str], *children: Proc) -> None:
    """Until every one of `expected` is stored under incoming (complete: stored means renamed)."""
    wanted = set(expected)
    wait_until(
        lambda: wanted <= set(receiver.stored_files()),
        f"{len(wanted)} files on the receiver",
        receiver.child,
        *children,
    )


def received_paths(log: str) -> list[str]:
    """The paths of the receiver's "received PATH (" lines, in log order."""
    return re.findall(r"received (\S+) \(", log)


def assert_identical(source: Path, dest: Path) -> None:
    report = io.StringIO()
    assert verify_trees(source, dest, report) == 0, report.getvalue()
