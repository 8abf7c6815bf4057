"""Tests for tests/procs.py, the process wrapper the integration tests and the benchmark share.

Its reaper and Popen must never disagree about a child: a wrong exit status would pass or
fail integration tests for the wrong reason, a lost CPU time would spoil a benchmark figure.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from tests.procs import Proc

PYTHON = [sys.executable, "-S", "-c"]  # -S: no site import, so each child starts quickly


def test_exit_status_log_and_cpu_time() -> None:
    burn = "import sys\nfor i in range(300_000): i * i\nprint('done', file=sys.stderr)\nsys.exit(3)"
    proc = Proc("burner", [*PYTHON, burn])
    assert proc.wait(60) == 3
    assert proc.returncode == 3 and proc.process.poll() == 3
    assert proc.log == "done\n"
    assert proc.cpu_seconds > 0  # wait4's account of a process that computed something
    assert proc.ended_ns is not None and proc.elapsed > 0


def test_stop_reports_the_signal_that_ended_it() -> None:
    proc = Proc(
        "sleeper", [*PYTHON, "import sys, time\nprint('up', file=sys.stderr)\ntime.sleep(60)"]
    )
    proc.wait_for("up", 60)
    assert proc.process.poll() is None
    assert proc.stop(signal.SIGKILL) == -signal.SIGKILL


def poll_while_it_runs(proc: Proc, seen: list[int | None]) -> None:
    seen.extend(proc.process.poll() for _ in range(2000))


def test_polling_from_another_thread_never_spoils_the_exit_status() -> None:
    """Integration tests call process.poll() while the reaper thread waits for the same child."""
    for _ in range(5):
        proc = Proc("quick", [*PYTHON, "raise SystemExit(7)"])
        seen: list[int | None] = []
        poller = threading.Thread(target=poll_while_it_runs, args=(proc, seen))
        poller.start()
        assert proc.wait(60) == 7
        poller.join()
        assert set(seen) <= {None, 7}
        assert proc.process.poll() == 7


def test_wait_for_gives_up_when_the_process_ends_without_the_line() -> None:
    proc = Proc("silent", [*PYTHON, "import sys\nprint('something else', file=sys.stderr)"])
    with pytest.raises(RuntimeError, match="something else"):
        proc.wait_for("never", 60)
    assert proc.wait(60) == 0


def test_wait_times_out_on_a_process_that_keeps_running() -> None:
    proc = Proc("sleeper", [*PYTHON, "import time\ntime.sleep(60)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.05)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
