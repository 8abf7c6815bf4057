"""What a sending run has done and where its connection stands.

`Progress` feeds the progress bar and the final summary of `send --once`; `Link` feeds the
running sender's status file and metrics; `Tally` the metrics.  `Delivery` keeps them up to
date.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from ..tally import Histogram

# From a scan's last write to its ACK: the settle time, the queue and the transfer.
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


@dataclass
class Progress:
    """What this run has done, for the progress bar and the final summary.

    Payload bytes are counted as they go out (it is the transports' `Meter`), not only when a
    file is acknowledged, so the bar moves through a big file.
    """

    files_total: int = 0
    files_already_delivered: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0  # the sizes of the files answered delivered
    bytes_sent: int = 0  # payload bytes that went out in this run: the rate
    bytes_resumed: int = 0  # bytes the receiver already held when a payload began
    started: float = field(default_factory=time.monotonic)
    # How much of each file not yet answered the receiver holds: resumed plus sent.
    under_way: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_moved(self) -> int:
        """How far along the run is: files delivered plus what is under way of the others."""
        return min(self.bytes_total, self.bytes_done + sum(self.under_way.values()))

    def resumed(self, relpath: str, offset: int) -> None:
        self.under_way[relpath] = offset
        self.bytes_resumed += offset

    def sent(self, relpath: str, count: int) -> None:
        self.under_way[relpath] = self.under_way.get(relpath, 0) + count
        self.bytes_sent += count

    def delivered(self, relpath: str, size: int) -> None:
        self.under_way.pop(relpath, None)
        self.files_done += 1
        self.bytes_done += size

    def dropped(self, relpath: str, size: int) -> None:
        """A file leaves this run's count (not complete, withdrawn, unreadable)."""
        self.under_way.pop(relpath, None)
        self.files_total -= 1
        self.bytes_total -= size


class LinkState(enum.StrEnum):
    """Where the way to the receiver stands, as `scanxfer status` shows it."""

    IDLE = "idle"  # no connection open: nothing to send (or not tried yet)
    CONNECTED = "connected"
    RETRYING = "retrying"  # the last attempt to connect failed, or the connection was lost
    PAUSED = "paused"  # connected, but the receiver has no space: waiting before offering


@dataclass
class Link:
    """The connection's state, since when (epoch seconds) and the last reason it failed."""

    state: LinkState = LinkState.IDLE
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    last_error_at: float | None = None
    next_attempt: float | None = None  # epoch seconds, while retrying or paused
    failures: int = 0  # in a row, since the last connection made or file acknowledged

    def become(self, state: LinkState, error: str | None = None, wait: float = 0.0) -> None:
        """Enter `state` (its `since` stays if it is the same), failing with `error` if given,
        with the next attempt `wait` seconds from now."""
        now = time.time()
        if state is not self.state:
            self.state, self.since = state, now
        self.next_attempt = now + wait if wait else None
        if error is not None:
            self.last_error, self.last_error_at = error, now
            self.failures += 1

    def succeeded(self) -> None:
        """Connected, or a file acknowledged: the run of failures is over (its error stays)."""
        self.become(LinkState.CONNECTED)
        self.failures = 0


@dataclass
class Tally:
    """Totals since the daemon started, kept across reloads: what its metrics export.

    Written by the delivery's thread, read by a scrape's: plain numbers, so a reader sees
    each one whole, and a file costs a few additions whether or not anyone scrapes.
    """

    delivered: int = 0  # ACKs of any outcome, duplicates too
    delivered_bytes: int = 0
    failed: int = 0  # refused for good, or unreadable: the journal keeps them failed
    retries: int = 0  # files put back: a refusal for now, or in flight on a lost connection
    last_delivered: float | None = None  # epoch seconds
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))

    def acked(self, size: int, mtime_ns: int) -> None:
        now = time.time()
        self.delivered += 1
        self.delivered_bytes += size
        self.last_delivered = now
        # The mtime is when the writer last wrote, which is as close to its close as the
        # journal gets; a clock step back makes no negative latency.
        self.latency.observe(max(0.0, now - mtime_ns / 1e9))
