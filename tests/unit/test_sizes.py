"""Counts, sizes and rates as log lines and `scanxfer status` print them."""

from __future__ import annotations

from scanxfer.receiver.shared import Stats
from scanxfer.sizes import counted, human_size


def test_one_is_singular_and_every_other_count_plural() -> None:
    assert [counted(n, "connection") for n in (0, 1, 2)] == [
        "0 connections",
        "1 connection",
        "2 connections",
    ]


def test_the_receivers_status_line_counts_in_words() -> None:
    stats = Stats()
    stats.connections = 1
    stats.stored("a.npy", 2048)
    assert stats.status_line() == f"1 file, {human_size(2048)} received, last a.npy; 1 connection"
