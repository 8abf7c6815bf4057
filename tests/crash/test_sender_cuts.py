"""Power cuts under a real sender with after_send move and delete: no scan lost, each sent once."""

from __future__ import annotations

from pathlib import Path

from ..integration.harness import seeded_random
from .sender_cuts import run_sender_cuts
from .table import full_run, record


def test_power_cuts_under_the_sender(tmp_path: Path) -> None:
    full = full_run()
    cuts = 30 if full else 10
    seed = seeded_random().randrange(2**32)
    report = run_sender_cuts(tmp_path, cuts=cuts, big_mib=64 if full else 8, seed=seed)
    record(report)
    report.assert_clean()
    assert report.cut_points >= cuts
    assert report.acked, "no ACK was seen: the cuts tested nothing"
