"""Counting for the metrics endpoint without the metrics library on the per-file path.

The daemons count in plain integers and these histograms whether or not anyone scrapes
them; `scrape` and the two `metrics` modules turn them into Prometheus families only when
a scrape asks.  So a receiver without python3-prometheus-client still counts (for nobody),
and a file costs a lock and an addition, never a library call.
"""

from __future__ import annotations

import bisect
import threading


class Histogram:
    """Observations in fixed buckets: Prometheus's cumulative `le` buckets, read at scrape."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to it, as `le` (less or equal) says.
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        """The buckets as (le, count of observations <= le), ending with +Inf; and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        buckets, running = [], 0
        for bound, count in zip([*map(repr, self.bounds), "+Inf"], counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets, total
