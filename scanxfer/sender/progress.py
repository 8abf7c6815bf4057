"""A one-line progress bar for `send --once` on a terminal (files, bytes, rate, ETA).

Shown only when stderr is a terminal and not journald, so logs and pipes stay
clean.  Log lines would otherwise land in the middle of the bar, so while it is
shown a logging filter wipes the bar before each record; the next draw puts it
back.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType
from typing import TextIO

from ..sizes import human_size
from ..systemd import stderr_is_journal
from .delivery import Progress

REDRAW_SECONDS = 0.2
CLEAR_LINE = "\r\033[K"


class ProgressBar:
    def __init__(self, progress: Progress, stream: TextIO | None) -> None:
        self.progress, self.stream = progress, stream
        self._last_draw = 0.0
        self._shown = False

    @classmethod
    def for_terminal(cls, progress: Progress) -> ProgressBar:
        """A bar on stderr if a person is watching it, else one that draws nothing."""
        visible = (
            sys.stderr.isatty() and not stderr_is_journal() and "INVOCATION_ID" not in os.environ
        )
        return cls(progress, sys.stderr if visible else None)

    def __enter__(self) -> ProgressBar:
        if self.stream is not None:
            for handler in logging.getLogger("scanxfer").handlers:
                handler.addFilter(self._wipe_before_log)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.stream is None:
            return
        for handler in logging.getLogger("scanxfer").handlers:
            handler.removeFilter(self._wipe_before_log)
        self._wipe_before_log(None)

    def _wipe_before_log(self, record: logging.LogRecord | None) -> bool:
        if self._shown and self.stream is not None:
            self.stream.write(CLEAR_LINE)
            self._shown = False
        return True

    def draw(self) -> None:
        now = time.monotonic()
        if self.stream is None or now - self._last_draw < REDRAW_SECONDS:
            return
        self._last_draw = now
        self.stream.write(CLEAR_LINE + self.line(now))
        self.stream.flush()
        self._shown = True

    def line(self, now: float) -> str:
        done = self.progress
        elapsed = max(now - done.started, 1e-6)
        speed = done.bytes_done / elapsed
        left = done.bytes_total - done.bytes_done
        eta = _clock(left / speed) if speed > 0 else "--:--"
        return (
            f"{done.files_done}/{done.files_total} files  "
            f"{human_size(done.bytes_done)}/{human_size(done.bytes_total)}  "
            f"{speed / 1e6:.1f} MB/s  ETA {eta}"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"
