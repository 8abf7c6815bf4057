"""B3: how long after a scan is closed its durable ACK arrives, with a watching sender.

`scanxfer simulate` writes 1 MiB scans about 20 times a second into the directory a
`scanxfer send` daemon watches; `scanxfer receive` stores them.  Without touching scanxfer,
the harness takes the times from what the processes say and from the files:

- the writer's close: the arrival of simulate's "wrote NAME" line, logged right after the
  close.  The ACK is timed the same way (the arrival of the sender's "sent NAME" line, logged
  once the durable ACK is in), so both ends carry the same pipe and wake-up delay;
- as a cross-check, the file's final mtime: the time of its last write, but the kernel
  stamps it from a clock that ticks every jiffy (4 ms at HZ=250), so it can be up to a tick
  early and latencies taken from it are pessimistic by up to that much;
- the receiver's "received NAME" line: the file is durable (fsync, rename, fsync of the
  directory all done) and its ACK is on its way.

The reference is the pump sending the same files one after another: its send-to-ACK time per
file is the floor for a 1 MiB file, without any waiting for the file to be finished.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from ..procs import Proc
from .contenders import (
    GIVE_UP_SECONDS,
    REPO,
    cleanup,
    paired_sender_config,
    python_module,
    scanxfer_receiver,
)

SHAPE = "512x1024"  # uint16: 1 MiB of data after a 128-byte header
NS_PER_MS = 1e6


@dataclass(frozen=True)
class LatencyRun:
    settle_seconds: float
    files: int
    rate_hz: float  # achieved writing rate, from the first and last mtime
    close_to_ack_ms: list[float]  # from the writer's "wrote" line to the sender's "sent" line
    close_to_stored_ms: list[float]  # ... to the receiver's "received" line
    mtime_to_ack_ms: list[float]  # from the final mtime: pessimistic by up to a jiffy
    pump_ms: list[float]  # the pump's send-to-ACK time for the same files

    def as_dict(self) -> dict[str, object]:
        """Percentiles instead of every file's figure: results.json stays small enough to
        commit after each run."""
        out: dict[str, object] = asdict(self)
        for key, value in out.items():
            if isinstance(value, list):
                out[key] = summary(value)
        return out


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 3),
        "p90": round(percentile(values, 0.9), 3),
        "p99": round(percentile(values, 0.99), 3),
        "max": round(max(values), 3),
    }


def run_latency(work: Path, files: int, interval: float, settle: float) -> LatencyRun:
    scans = work / "scans"
    scans.mkdir(parents=True)
    with scanxfer_receiver(work) as (receiver, port):
        sender_config = paired_sender_config(
            work,
            port,
            f"watch_dir: {scans}\nstate_dir: {work / 'sender'}\nsettle_seconds: {settle}\n",
        )
        sender = Proc("scanxfer send", python_module("scanxfer", "send", "-c", str(sender_config)))
        with cleanup(sender):
            sender.wait_for(r"watching \S+, delivering to", 60)
            writer = Proc("simulate", python_module("scanxfer", *_simulate(scans, files, interval)))
            with cleanup(writer):
                if writer.wait(GIVE_UP_SECONDS) != 0:
                    raise RuntimeError(f"simulate failed:\n{writer.log_tail()}")
            sender.wait_for(r"\bsent \S+ \(", GIVE_UP_SECONDS, count=files)
            sender.stop()
        receiver.stop()
    closed = _stamps(writer, r"\bwrote (\S+) \(")
    acked = _stamps(sender, r"\bsent (\S+) \(")
    stored = _stamps(receiver, r": received (\S+) \(")
    mtimes = {name: (scans / name).stat().st_mtime_ns for name in closed}
    ordered = sorted(mtimes.values())
    return LatencyRun(
        settle_seconds=settle,
        files=files,
        rate_hz=(len(ordered) - 1) / ((ordered[-1] - ordered[0]) / 1e9),
        close_to_ack_ms=_gaps(closed, acked),
        close_to_stored_ms=_gaps(closed, stored),
        mtime_to_ack_ms=_gaps(mtimes, acked),
        pump_ms=_pump_times(scans, work / "pump"),
    )


def _simulate(scans: Path, files: int, interval: float) -> list[str]:
    size = ["--shape", SHAPE, "--dtype", "uint16"]
    return [
        "simulate",
        "--dir",
        str(scans),
        "--count",
        str(files),
        "--interval",
        str(interval),
        *size,
    ]


def _stamps(proc: Proc, pattern: str) -> dict[str, int]:
    return {match.group(1): stamp for stamp, match in proc.stamped(pattern)}


def _gaps(start: dict[str, int], end: dict[str, int]) -> list[float]:
    missing = start.keys() - end.keys()
    if missing:
        raise RuntimeError(f"{len(missing)} files never reached the end point, e.g. {min(missing)}")
    return [(end[name] - start[name]) / NS_PER_MS for name in sorted(start)]


def _pump_times(scans: Path, work: Path) -> list[float]:
    """Send the same files with the pump, one after another; each one's send-to-ACK time."""
    work.mkdir()
    receiver = Proc(
        "pump receive", python_module("tests.bench.pump", "receive", "--dir", str(work)), REPO
    )
    with cleanup(receiver):
        port = receiver.wait_for(r"listening on \S+:(\d+)", 60).group(1)
        report = work / "report.json"
        argv = ["send", "--to", f"127.0.0.1:{port}", "--source", str(scans)]
        sender = Proc(
            "pump send", python_module("tests.bench.pump", *argv, "--report", str(report)), REPO
        )
        with cleanup(sender):
            if sender.wait(GIVE_UP_SECONDS) != 0 or receiver.wait(60) != 0:
                raise RuntimeError(f"pump failed:\n{sender.log_tail()}\n{receiver.log_tail()}")
    seconds: list[float] = json.loads(report.read_text())["seconds"]
    return [s * 1e3 for s in seconds]
