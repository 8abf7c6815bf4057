"""Child processes for the tests and the benchmark: log lines as they arrive, exit status, CPU
time and peak memory.

One wrapper for every process the suite starts (scanxfer's commands in tests/integration;
scanxfer, the reference pump and rsync in tests/bench), so all are started, watched, stopped
and measured the same way:

- log lines (stderr, or stdout too with ``merge_stdout``) are stamped with the wall clock
  (``time.time_ns``) as they arrive through the pipe, so latencies can be taken between lines
  of different processes;
- CPU time is the kernel's account: ``/proc/PID/stat`` while the process lives (to subtract
  start-up), the ``wait4`` rusage when it is reaped (which also counts its reaped children,
  as the rsync daemon's per-connection workers are);
- peak memory is ``VmHWM`` from ``/proc/PID/status``, sampled until exit.  Not ``ru_maxrss``:
  with vfork, as ``subprocess`` uses, that would report the harness's own peak.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_SAMPLE_SECONDS = 0.02


class Proc:
    """One child process; stderr is captured line by line, stdout discarded unless
    ``merge_stdout`` (for tools that report on stdout) sends it the same way.

    ``process`` is the `subprocess.Popen`; its ``poll()``, ``returncode``, ``send_signal()``
    and ``pid`` may be used from any thread.
    """

    def __init__(
        self, label: str, argv: Sequence[str], cwd: Path | None = None, merge_stdout: bool = False
    ) -> None:
        self.label = label
        # Wall-clock times (time.time_ns), comparable with file mtimes and across processes.
        self.lines: list[tuple[int, str]] = []  # (arrival time, line)
        self.changed = threading.Condition()
        self.peak_rss_kib = 0
        self.cpu_seconds = 0.0  # user + system, from rusage once reaped
        self.started_ns = time.time_ns()
        self.ended_ns: int | None = None
        self._output_ended = False
        self.process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if merge_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if merge_stdout else subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid
        self._threads = [
            threading.Thread(target=self._read_output, daemon=True),
            threading.Thread(target=self._reap, daemon=True),
            threading.Thread(target=self._sample_memory, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return self.process.returncode

    @property
    def log(self) -> str:
        """Everything it logged so far, one line per line."""
        with self.changed:
            return "".join(f"{line}\n" for _, line in self.lines)

    def _read_output(self) -> None:
        stream = self.process.stderr or self.process.stdout
        assert stream is not None
        for line in stream:
            stamp = time.time_ns()
            with self.changed:
                self.lines.append((stamp, line.rstrip("\n")))
                self.changed.notify_all()
        with self.changed:
            self._output_ended = True
            self.changed.notify_all()

    def _reap(self) -> None:
        # wait4 instead of Popen.wait: it also yields the CPU time the child used. Under the
        # lock Popen.wait itself holds while it waits, so that process.poll() in any thread
        # answers "running" meanwhile instead of calling waitpid: a poll that reaped the child
        # would take its CPU time with it, or, just after we had, call its exit status 0.
        with self.process._waitpid_lock:
            _, status, usage = os.wait4(self.pid, 0)
            self.ended_ns = time.time_ns()
            self.cpu_seconds = usage.ru_utime + usage.ru_stime
            self.process.returncode = os.waitstatus_to_exitcode(status)
        with self.changed:
            self.changed.notify_all()

    def _sample_memory(self) -> None:
        while self.ended_ns is None:
            self.note_peak_rss()
            time.sleep(_SAMPLE_SECONDS)

    def note_peak_rss(self) -> None:
        """Fold the current VmHWM (a high-water mark kept by the kernel) into peak_rss_kib."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))

    def cpu_now(self) -> float:
        """CPU seconds used so far, own and reaped children's (10 ms resolution)."""
        try:
            text = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:  # already reaped: everything it used is in the rusage
            self.wait(60)
            return self.cpu_seconds
        fields = text.rpartition(")")[2].split()
        # After the ")" ending the command name: field 14..17 of proc(5) are at 11..14 here.
        return sum(int(value) for value in fields[11:15]) / _TICKS

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> re.Match[str]:
        """The `count`-th log line matching `pattern`; raises once the process has ended
        without logging it, or when `timeout` runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                matches = [m for _, line in self.lines if (m := regex.search(line))]
                if len(matches) >= count:
                    return matches[count - 1]
                ended = self._output_ended and self.returncode is not None
                if ended or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.label} did not log {pattern!r} {count} time(s) "
                        f"(exit status {self.returncode}):\n{self.log_tail()}"
                    )
                self.changed.wait(0.2)

    def stamped(self, pattern: str) -> list[tuple[int, re.Match[str]]]:
        """Arrival time and match of every log line matching `pattern`."""
        regex = re.compile(pattern)
        with self.changed:
            return [(stamp, m) for stamp, line in self.lines if (m := regex.search(line))]

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself (and its output to end); its exit status.

        Raises subprocess.TimeoutExpired if it is still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self.returncode is None or self.ended_ns is None:
            raise subprocess.TimeoutExpired(self.process.args, timeout or 0.0)
        return self.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` (SIGTERM: the daemons' clean stop) and wait; its exit status."""
        if self.returncode is None:
            self.note_peak_rss()
            self.process.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        """Last resort when a run failed half-way: never leave a child behind."""
        if self.returncode is None:
            self.process.kill()
            self.wait(30)

    @property
    def elapsed(self) -> float:
        """Seconds from spawning to exit."""
        if self.ended_ns is None:
            raise RuntimeError(f"{self.label} has not exited yet")
        return (self.ended_ns - self.started_ns) / 1e9

    def log_tail(self, lines: int = 30) -> str:
        with self.changed:
            return "\n".join(line for _, line in self.lines[-lines:])


def start_scanxfer(label: str, *args: str) -> Proc:
    """``python -m scanxfer ARGS`` with the interpreter running the tests, as a user runs it."""
    return Proc(label, [sys.executable, "-m", "scanxfer", *args])
