"""Power cuts under a real receiver: no ACKed file lost, no partial under a final name."""

from __future__ import annotations

import os
from pathlib import Path

from ..integration.harness import seeded_random
from .receiver_cuts import run_receiver_cuts
from .table import full_run, record


def test_power_cuts_under_the_receiver(tmp_path: Path) -> None:
    full = full_run()
    seed = seeded_random().randrange(2**32)
    report = run_receiver_cuts(
        tmp_path,
        cuts=50 if full else 10,
        big_mib=64 if full else 8,
        bigs=3 if full else 1,
        seed=seed,
    )
    record(report)
    report.assert_clean()
    assert report.cut_points >= (50 if full else 10)
    assert report.acked, "no ACK was seen: the cuts tested nothing"
    assert report.syncfs_seen, "no group commit (syncfs) came through strace"
    assert os.listdir(tmp_path / "fs" / "mnt") == []
