"""The receiver's Prometheus metrics, made from `Stats` and the store at scrape time.

Imported only when metrics_listen is set (see `serve`): it needs prometheus_client, which
the Debian package only recommends.  Names follow Prometheus's conventions (docs:
"Metric and label naming"): a `scanxfer_receiver_` prefix, `_total` on counters, base units
(`_bytes`, `_seconds`, timestamps in epoch seconds).  docs/monitoring/ holds alert rules and
a dashboard built on them; tests check that they use only the names exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .. import protocol as p
from ..scrape import Endpoint
from .shared import Services
from .status_page import render

PREFIX = "scanxfer_receiver_"


class ReceiverCollector:
    """Reads the receiver's counters when Prometheus asks, and only then."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        stats = self.services.stats
        with stats.lock:
            senders = {
                name: (c.files, c.bytes, c.duplicates, c.kept_beside, c.last_received)
                for name, c in stats.senders.items()
            }
            nacks = dict(stats.nacks)
            connections = stats.connections
        yield from _per_sender(senders)
        refused = CounterMetricFamily(
            PREFIX + "nacks", "Files refused (NACK), by reason", labels=["reason"]
        )
        # Every reason, even at 0: a rate() over a series that appears late misses its start.
        for reason in p.NackReason:
            refused.add_metric([reason.name.lower()], nacks.get(reason.name.lower(), 0))
        yield refused
        yield GaugeMetricFamily(
            PREFIX + "connections",
            "Connections open, in their handshake or settled",
            value=connections,
        )
        yield CounterMetricFamily(
            PREFIX + "failed_handshakes",
            "Handshakes failed (wrong or unknown key, not TLS)",
            value=self.services.gate.brake.total,
        )
        yield from self._storage()
        buckets, total = stats.commit_seconds.cumulative()
        yield HistogramMetricFamily(
            PREFIX + "group_commit_seconds",
            "Time to make a batch of completed files durable (fsync, rename, fsync of dirs)",
            buckets=buckets,
            sum_value=total,
        )

    def _storage(self) -> Iterator[Metric]:
        store = self.services.store
        disk = os.statvfs(store.incoming_dir)
        yield GaugeMetricFamily(
            PREFIX + "free_bytes",
            "Free space for the receiver on the incoming filesystem",
            value=disk.f_bavail * disk.f_frsize,
        )
        yield GaugeMetricFamily(
            PREFIX + "partial_bytes",
            "Bytes held in unfinished files, waiting to resume",
            value=sum(item.held for item in store.leftover_partials()),
        )


def _per_sender(
    senders: dict[str, tuple[int, int, int, int, float | None]],
) -> Iterator[Metric]:
    families = [
        CounterMetricFamily(PREFIX + "received_files", "Files newly stored", labels=["sender"]),
        CounterMetricFamily(
            PREFIX + "received_bytes", "Payload bytes of files stored", labels=["sender"]
        ),
        CounterMetricFamily(
            PREFIX + "duplicates", "Files offered that were stored already", labels=["sender"]
        ),
        CounterMetricFamily(
            PREFIX + "kept_beside",
            "Files stored beside a different file of the same name (a clash)",
            labels=["sender"],
        ),
    ]
    last = GaugeMetricFamily(
        PREFIX + "last_received_timestamp_seconds",
        "When the sender's last file was stored (epoch seconds)",
        labels=["sender"],
    )
    for name, (*counts, received) in sorted(senders.items()):
        for family, count in zip(families, counts, strict=True):
            family.add_metric([name], count)
        if received is not None:
            last.add_metric([name], received)
    yield from families
    yield last


def open_endpoint(host: str, port: int, services: Services, name: str) -> Endpoint:
    """/metrics and the status page at /, served from a thread of their own."""

    def status_page() -> tuple[str, bytes]:
        return "text/html; charset=utf-8", render(services, name)

    return Endpoint(host, port, ReceiverCollector(services), {"/": status_page})
