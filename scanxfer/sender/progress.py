"""A one-line progress bar for `send --once` on a terminal (files, bytes, rate, ETA), and
the summary line it ends with.

The bar is shown only when stderr is a terminal and not journald, and not with -q, so logs
and pipes stay clean.  It is drawn between the slices of a file (the delivery's `alive`), so
it moves through a big file; bytes the receiver already held (a resume) are counted as done
and named.  Log lines would otherwise land in the middle of the bar, so while it is shown a
logging filter wipes the bar before each record; the next draw puts it back.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from types import TracebackType
from typing import TextIO

from ..sizes import human_size, rate
from ..systemd import stderr_is_journal
from .run_state import Progress

REDRAW_SECONDS = 0.2
CLEAR_LINE = "\r\033[K"
# The rate shown is over about this many recent seconds: an ETA that follows the link.
RATE_WINDOW_SECONDS = 5.0


class ProgressBar:
    def __init__(self, progress: Progress, stream: TextIO | None) -> None:
        self.progress, self.stream = progress, stream
        self._last_draw = 0.0
        self._shown = False
        self._samples = deque([(progress.started, 0)])  # bytes_sent counts from `started`

    @classmethod
    def for_terminal(cls, progress: Progress) -> ProgressBar:
        """A bar on stderr if a person is watching it, else one that draws nothing."""
        quiet = not logging.getLogger("scanxfer").isEnabledFor(logging.INFO)  # -q
        visible = (
            sys.stderr.isatty()
            and not quiet
            and not stderr_is_journal()
            and "INVOCATION_ID" not in os.environ
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
        speed = self._speed(now)
        left = done.bytes_total - done.bytes_moved
        eta = _clock(left / speed) if speed > 0 else "--:--"
        resumed = f" ({human_size(done.bytes_resumed)} resumed)" if done.bytes_resumed else ""
        return (
            f"{done.files_done}/{done.files_total} files  "
            f"{human_size(done.bytes_moved)}/{human_size(done.bytes_total)}{resumed}  "
            f"{speed / 1e6:.1f} MB/s  ETA {eta}"
        )

    def _speed(self, now: float) -> float:
        """Bytes sent per second over the last RATE_WINDOW_SECONDS (since the start, before)."""
        samples = self._samples
        samples.append((now, self.progress.bytes_sent))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW_SECONDS:
            samples.popleft()
        then, sent_then = samples[0]
        return (self.progress.bytes_sent - sent_then) / max(now - then, 1e-6)


def summary(progress: Progress, now: float) -> str:
    """The closing line of `send --once`: files and bytes delivered, time, average rate."""
    elapsed = now - progress.started
    resumed = (
        f", {human_size(progress.bytes_resumed)} of it already on the receiver (resumed)"
        if progress.bytes_resumed
        else ""
    )
    return (
        f"{progress.files_done} of {progress.files_total} files delivered "
        f"({human_size(progress.bytes_done)}) in {_clock(elapsed)}; "
        f"{human_size(progress.bytes_sent)} sent at {rate(progress.bytes_sent, elapsed)} "
        f"on average{resumed}"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)  # 64.9999 s of float arithmetic is 1:05
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"
