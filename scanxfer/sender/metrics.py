"""The sender daemon's Prometheus metrics, made from its `Delivery` and `Tally` at scrape time.

Imported only when metrics_listen is set: it needs prometheus_client.  Every family carries
the sender's name as the label `sender`, the name the receiver counts its files under, so
an alert can join the two ends (docs/monitoring/scanxfer.rules.yml).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .delivery import Delivery
from .run_state import LinkState, Tally

PREFIX = "scanxfer_sender_"


class SenderCollector:
    """Reads the running delivery when Prometheus asks; `follow` it anew after a reload."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.delivery: Delivery | None = None

    def follow(self, delivery: Delivery) -> None:
        self.delivery = delivery

    def collect(self) -> Iterator[Metric]:
        delivery = self.delivery
        if delivery is None:
            return
        label = [delivery.config.name]
        yield from _backlog(delivery, label)
        tally = self.tally
        for name, doc, value in (
            (
                "delivered_files",
                "Files acknowledged, duplicates too",
                tally.delivered,
            ),
            ("delivered_bytes", "Bytes of the files acknowledged", tally.delivered_bytes),
            ("failed_files", "Files refused for good, or unreadable", tally.failed),
            ("retries", "Files put back for another attempt", tally.retries),
        ):
            counter = CounterMetricFamily(PREFIX + name, doc, labels=["sender"])
            counter.add_metric(label, value)
            yield counter
        if tally.last_delivered is not None:
            yield _gauge(
                "last_delivered_timestamp_seconds",
                "When the last file was acknowledged (epoch seconds)",
                label,
                tally.last_delivered,
            )
        state = GaugeMetricFamily(
            PREFIX + "connection_state",
            "The link to the receiver: 1 for the state it is in",
            labels=["sender", "state"],
        )
        for each in LinkState:
            state.add_metric([*label, str(each)], float(delivery.link.state is each))
        yield state
        buckets, total = tally.latency.cumulative()
        latency = HistogramMetricFamily(
            PREFIX + "close_to_ack_seconds",
            "From a scan's last write to the receiver's ACK",
            labels=["sender"],
        )
        latency.add_metric(label, buckets, total)
        yield latency


def _backlog(delivery: Delivery, label: list[str]) -> Iterator[Metric]:
    # list() copies each dict in one step under the GIL, while the delivery thread changes it.
    jobs = list(delivery.queued.values()) + list(delivery.offered.values())
    oldest = min((job.version.mtime_ns for job in jobs), default=None)
    yield _gauge("backlog_files", "Files waiting or in flight", label, len(jobs))
    yield _gauge("backlog_bytes", "Bytes of those files", label, sum(job.size for job in jobs))
    yield _gauge(
        "oldest_waiting_seconds",
        "Age of the oldest file waiting, from its last write; 0 with none",
        label,
        0.0 if oldest is None else max(0.0, time.time() - oldest / 1e9),
    )


def _gauge(name: str, doc: str, label: list[str], value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(PREFIX + name, doc, labels=["sender"])
    gauge.add_metric(label, value)
    return gauge
