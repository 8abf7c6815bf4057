"""systemd integration: logging that journald understands, and sd_notify messages.

Both fall back to plain behaviour outside systemd, so the same code runs from a terminal,
under a systemd unit, and in tests.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time

from sdnotify import SystemdNotifier

log = logging.getLogger(__name__)

# Syslog priorities as a "<N>" line prefix: journald strips it and records the priority, so
# `journalctl -p warning` shows only problems (see sd-daemon(3)).
# How often a long step pings the watchdog: far below any sensible WatchdogSec=.
ALIVE_SECONDS = 1.0
_JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_TERMINAL_PREFIX = {
    logging.DEBUG: "scanxfer: debug: ",
    logging.INFO: "scanxfer: ",
    logging.WARNING: "scanxfer: warning: ",
    logging.ERROR: "scanxfer: error: ",
}


def setup_logging(verbosity: int) -> None:
    """Send the "scanxfer" loggers to stderr: 0 = info, above 0 = debug, below 0 = warnings.

    No timestamps: journald adds its own, and a terminal user does not need them.  Safe to
    call again (the previous handler is replaced), which the tests and `main()` rely on.
    """
    logger = logging.getLogger("scanxfer")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_StderrHandler(journal=stderr_is_journal()))
    if verbosity > 0:
        logger.setLevel(logging.DEBUG)
    else:
        logger.setLevel(logging.INFO if verbosity == 0 else logging.WARNING)


def stderr_is_journal() -> bool:
    """True when systemd connected stderr to journald: $JOURNAL_STREAM names its dev:inode.

    Checking the inode (not just that the variable exists) matters because the variable is
    inherited by everything a service starts, including a shell whose stderr is a terminal.
    """
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no stderr, or one without a descriptor
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{stat.st_dev}:{stat.st_ino}"


class _StderrHandler(logging.Handler):
    """Writes each line of a message with a priority prefix to whatever sys.stderr is now.

    Looking sys.stderr up per message (instead of keeping the stream) keeps working when a
    test harness swaps it.  Every line is prefixed so a traceback keeps its priority.
    """

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self._journal = journal
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix = self._prefix(record.levelno)
            lines = self.format(record).splitlines() or [""]
            sys.stderr.write("".join(f"{prefix}{line}\n" for line in lines))
            sys.stderr.flush()
        except Exception:
            self.handleError(record)

    def _prefix(self, level: int) -> str:
        # Round custom levels down to the standard level they exceed; CRITICAL is an error.
        standard = max((lvl for lvl in _TERMINAL_PREFIX if lvl <= level), default=logging.DEBUG)
        if self._journal:
            return f"<{_JOURNAL_PRIORITY[standard]}>"
        return _TERMINAL_PREFIX[standard]


class Notifier:
    """Tells systemd about our state (sd_notify); every call does nothing outside systemd.

    systemd sets NOTIFY_SOCKET for Type=notify units.  Without it there is nobody to tell,
    so the daemon code can call these methods unconditionally.
    """

    def __init__(self) -> None:
        self._notifier: SystemdNotifier | None = None
        self._last_alive = -math.inf
        address = os.environ.get("NOTIFY_SOCKET")
        if not address:
            return
        try:
            self._notifier = SystemdNotifier(debug=True)
        except OSError as exc:
            log.warning(
                "cannot reach systemd's notification socket %s (%s); "
                "systemd will not learn that the service is ready",
                address,
                exc,
            )

    @property
    def enabled(self) -> bool:
        """Whether messages actually go to systemd."""
        return self._notifier is not None

    def ready(self) -> None:
        """Startup is complete (for the receiver: the socket is bound and listening)."""
        self._send("READY=1")

    def reloading(self) -> None:
        """Re-reading configuration; call ready() when done."""
        # MONOTONIC_USEC lets systemd >= 253 match this message to the reload it asked for.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        """Shutting down, so systemd does not mistake the exit for a crash."""
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """One line shown by `systemctl status`."""
        self._send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> None:
        """Still alive; call every watchdog_interval() seconds when that is not None."""
        self._send("WATCHDOG=1")

    def alive(self) -> None:
        """Progress inside one long step (hashing or sending a big file): a watchdog ping,
        at most every ALIVE_SECONDS, so the step can call it as often as it likes."""
        now = time.monotonic()
        if self._notifier is not None and now - self._last_alive >= ALIVE_SECONDS:
            self._last_alive = now
            self.watchdog()

    def watchdog_interval(self) -> float | None:
        """Half of the unit's WatchdogSec=, in seconds, or None when no watchdog is asked for.

        Half the period leaves room for one late ping.  WATCHDOG_PID, when present, names the
        process systemd watches; a child that inherited the variables must not ping.
        """
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid is not None and pid.strip() != str(os.getpid()):
            return None
        return int(usec) / 2_000_000

    def _send(self, state: str) -> None:
        if self._notifier is None:
            return
        # sdnotify encodes with Latin-1 but systemd reads UTF-8: handing it the UTF-8 bytes as
        # Latin-1 characters puts exactly those bytes on the wire, so any file name survives.
        try:
            self._notifier.notify(state.encode("utf-8", "replace").decode("latin-1"))
        except OSError as exc:
            log.warning("cannot notify systemd (%s): %s", state.split("\n", 1)[0], exc)
