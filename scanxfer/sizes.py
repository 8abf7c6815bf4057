"""Sizes and rates as people read them in log lines and `scanxfer status`."""

from __future__ import annotations


def human_size(size: float) -> str:
    """Binary units, as `ls -h` and the config's sizes use."""
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"


def counted(count: int, noun: str) -> str:
    """`count` and `noun`, plural unless there is exactly one: "1 connection", "2 files"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def rate(size: int, seconds: float) -> str:
    """Decimal MB/s, the unit network links are quoted in."""
    return f"{size / max(seconds, 1e-6) / 1e6:.1f} MB/s"
