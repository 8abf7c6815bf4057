"""Fixtures every test gets: a private home, no inherited systemd environment, and the
"scanxfer" logger put back as it was; and a run that fails if a process it started outlives it."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis' deadline fails a test on wall-clock time, which a loaded CI machine can exceed.
settings.register_profile("scanxfer", deadline=None)
settings.load_profile("scanxfer")

# Set by systemd or a journald-connected shell; a test that wants them sets them itself.
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Point HOME and the XDG directories at a fresh directory, so no test reads the real
    ~/.config/scanxfer/sender.yaml or writes into the real ~/scans."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    for name in _SYSTEMD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _restore_scanxfer_logger() -> Iterator[None]:
    """Undo setup_logging() (which main() calls) so one test's verbosity cannot leak."""
    logger = logging.getLogger("scanxfer")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


# --- nothing a test starts may outlive the run ------------------------------------------------

# prctl(2): orphaned descendants are reparented to this process instead of to init, so a daemon
# a test started and lost track of (even a double-forked one) is still found at the end.
_PR_SET_CHILD_SUBREAPER = 36
# How long processes being torn down by the last fixtures get to finish on their own.
_LEFTOVER_GRACE_SECONDS = 10.0


def pytest_configure(config: pytest.Config) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _live_children() -> dict[int, str]:
    """This process's children that still run (zombies are reaped), with their command lines."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        state, ppid = fields[0], int(fields[1])
        if ppid != os.getpid():
            continue
        pid = int(stat.parent.name)
        if state == "Z":
            _reap(pid)
        else:
            children[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return children


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # reaped by its Popen meanwhile
        os.waitpid(pid, os.WNOHANG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + _LEFTOVER_GRACE_SECONDS
    while (leftovers := _live_children()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not leftovers:
        return
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    lines = "\n".join(f"  pid {pid}: {cmdline}" for pid, cmdline in leftovers.items())
    print(f"\nthe tests left {len(leftovers)} process(es) running (now killed):\n{lines}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
