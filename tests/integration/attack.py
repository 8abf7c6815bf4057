"""What the tests of a receiver under attack share: quick settings, waits and checks."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Callable

import xxhash

from scanxfer.tls import client_context

from .harness import (
    GIVE_UP_SECONDS,
    ReceiverProcess,
)
from .rawclient import GoodSender, connect

# Short deadlines keep refusals quick; a high brake keeps it out of tests not about it.
QUICK = {"handshake_timeout": "2s", "idle_timeout": "10s", "max_auth_failures": "100"}
StartReceiver = Callable[..., ReceiverProcess]
# "Give up" bound for a log line the receiver writes as soon as it acts.
LOG_SECONDS = 30


def logged(receiver: ReceiverProcess, text: str, times: int = 1) -> None:
    """Wait for `text` `times` in the receiver's log (it arrives through a pipe, a moment later)."""
    deadline = time.monotonic() + LOG_SECONDS
    while receiver.log.count(text) < times:
        if time.monotonic() > deadline:
            # The good sender's lines would bury the ones that matter.
            lines = [line for line in receiver.log.splitlines() if "received good/" not in line]
            raise AssertionError(f"the receiver never logged {text!r}:\n" + "\n".join(lines))
        time.sleep(0.05)


def assert_only_good_files(receiver: ReceiverProcess, good: GoodSender, *others: str) -> None:
    """The good sender kept going and nothing else was stored, not even a partial."""
    good.finish(receiver)
    assert receiver.stored_files() == sorted([*good.sent, *others])
    assert receiver.partials() == []
    assert receiver.child is not None and receiver.child.process.poll() is None


def scanxfer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanxfer", *args],
        capture_output=True,
        text=True,
        timeout=GIVE_UP_SECONDS,
        check=False,
    )


def tls_connect(port: int) -> ssl.SSLSocket:
    return client_context().wrap_socket(connect(port))


def digest(payload: bytes) -> bytes:
    return xxhash.xxh3_128(payload).digest()
