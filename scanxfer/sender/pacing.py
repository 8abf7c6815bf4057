"""The bandwidth limit (`max_rate`) and how big a slice of a file goes out at a time.

Pure arithmetic on a monotonic clock the caller reads: no sockets, no sleeping, so the
policy is tested on a fake clock (`tests/unit/test_pacing.py`).  `transport.Pulse` applies
it between the slices of every file a connection sends.
"""

from __future__ import annotations

# Between two slices the sender checks for a stop, moves the progress bar and signs life to
# the watchdog, so one slice should take about this long.  At a limited rate it is also the
# grain of the pacing: the link sees no burst longer than this.
SLICE_SECONDS = 0.1
MIN_SLICE = 1 << 12  # a page: at a few kB/s a slice still goes within a second
MAX_SLICE = 1 << 23  # sendfile per call on a fast link: the kernel moves it without copying
# A pause (waiting for an answer, hashing) earns at most this much sending ahead of the pace:
# one slice.  Not less: the time a slice spends going out on a slow link counts as a pause,
# and must not be charged again as a wait.
BURST_SECONDS = SLICE_SECONDS


class Pacer:
    """Holds the bytes sent to `rate` bytes per second on average (a token bucket).

    `rate` None means unlimited.  The bucket's debt is kept as the moment the bytes sent
    so far are paid for (`_paid_until`): a pause lets it fall behind the clock by at most
    BURST_SECONDS, which is then all that may go out at once.
    """

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"a rate must be positive, got {rate}")
        self.rate = rate
        self._paid_until: float | None = None

    def delay(self, count: int, now: float) -> float:
        """Account for `count` bytes sent at `now`; the seconds to wait before sending more."""
        if self.rate is None:
            return 0.0
        start = now if self._paid_until is None else max(self._paid_until, now - BURST_SECONDS)
        self._paid_until = start + count / self.rate
        return max(0.0, self._paid_until - now)

    def slice_size(self, ceiling: int = MAX_SLICE) -> int:
        """How many bytes to hand the socket in one call: a SLICE_SECONDS share of the rate."""
        if self.rate is None:
            return ceiling
        return max(MIN_SLICE, min(ceiling, int(self.rate * SLICE_SECONDS)))
