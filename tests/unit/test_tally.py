"""tally.Histogram: Prometheus's cumulative `le` buckets, counted without the library."""

from __future__ import annotations

from scanxfer.tally import Histogram


def test_buckets_are_cumulative_and_a_value_on_a_bound_counts_in_it() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    buckets, total = histogram.cumulative()
    assert buckets == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert total == 8.65
