"""Turn the runs into medians, ratios and target verdicts: bench/results.json and results.md.

Every ratio is scanxfer's median divided by the other tool's median from the same
`make bench`, so a slow or fast machine moves both sides and the ratio stays comparable.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import scanxfer

GB = 1e9
TLS_NOTE = (
    "Rows marked TLS run scanxfer as installed (TLS 1.3, the default), once with each cipher "
    "the receiver can choose (tls_cipher: aes, chacha20); the others run it with tls: false on "
    "both sides, where every frame and every 64 KiB of data carries a keyed BLAKE2b tag. The "
    "pump and rsync neither encrypt nor authenticate."
)
TLS_CIPHERS = ("aes", "chacha20")  # tls_cipher settings, each measured whatever this CPU is


def tls_tool(cipher: str) -> str:
    """The bench's name for scanxfer with TLS and `cipher` (a tls_cipher setting)."""
    return f"scanxfer TLS {cipher}"


SCANXFER_TOOLS = ("scanxfer", *(tls_tool(cipher) for cipher in TLS_CIPHERS))


@dataclass(frozen=True)
class Target:
    """One line of the issue's targets, with the figure that decides it."""

    workload: str
    claim: str
    figure: float | None  # None: not measured in this run
    limit: float
    at_most: bool  # True for "figure <= limit", False for "figure >= limit"

    @property
    def met(self) -> bool | None:
        if self.figure is None:
            return None
        return self.figure <= self.limit if self.at_most else self.figure >= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "claim": self.claim,
            "figure": self.figure,
            "limit": self.limit,
            "met": self.met,
        }


def machine(work: Path) -> dict[str, Any]:
    """What the figures depend on: CPUs, kernel, memory, the filesystem the files were on."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_gib": round(pages / (1 << 30), 1),
        "filesystem": _filesystem(work),
        "python": platform.python_version(),
        "scanxfer": scanxfer.__version__,
        "commit": _commit(),
    }


def load_average() -> float:
    """The 1-minute load average: other work on the machine shows up in every figure."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _filesystem(path: Path) -> str:
    """Type and device of the mount holding `path` (the longest matching mount point)."""
    best = ("", "unknown", "unknown")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, point, kind = line.split()[:3]
        inside = str(path).startswith(point.rstrip("/") + "/") or str(path) == point
        if inside and len(point) > len(best[0]):
            best = (point, kind, device)
    return f"{best[1]} on {best[2]}"


def _commit() -> str:
    """The checked-out commit, marked when the tree has uncommitted changes (read-only git)."""
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{head}+changes" if git("status", "--porcelain", "--untracked-files=no") else head


def median_of(runs: Sequence[dict[str, Any]], figure: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(figure(run) for run in runs)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def throughput_mb_s(run: dict[str, Any]) -> float:
    return float(run["bytes"]) / run["seconds"] / 1e6


def files_per_s(run: dict[str, Any]) -> float:
    return float(run["files"]) / run["seconds"]


def cpu_per_gb(run: dict[str, Any]) -> float:
    return float(run["receiver_cpu_seconds"]) / (run["bytes"] / GB)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Medians per tool and figure, and under "ratios" scanxfer's divided by the others'."""
    out = _medians(results)
    out["ratios"] = _ratios(out, results["rsync_tool"])
    return out


def _ratios(medians: dict[str, Any], rsync_tool: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workload in ("B1", "B2"):
        if workload not in medians:
            continue
        pairs = [(tool, other) for tool in SCANXFER_TOOLS for other in ("pump", rsync_tool)]
        # What TLS with each cipher costs against tls: false, and what the metrics endpoint
        # costs, on and scraped, against off (issues 16 and 17).
        pairs += [(tool, "scanxfer") for tool in (*SCANXFER_TOOLS[1:], "scanxfer metrics")]
        figures = medians[workload]
        for tool, other in pairs:
            if tool in figures and other in figures:
                out.setdefault(workload, {})[f"{tool}/{other}"] = _divided(
                    figures[tool], figures[other]
                )
    for settle, figures in medians.get("B3", {}).items():
        out.setdefault("B3", {})[settle] = {
            f"close_to_ack_{p}/pump": ratio(figures["close_to_ack_ms"][p], figures["pump_ms"][p])
            for p in ("p50", "p99")
        }
    return out


def _divided(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """Each of one tool's figures divided by another's (the sessions are words, not figures)."""
    return {key: ratio(value, theirs.get(key)) for key, value in mine.items() if key != "sessions"}


def _medians(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key, figure in (
        ("B1", "throughput_mb_s", throughput_mb_s),
        ("B2", "files_per_s", files_per_s),
    ):
        if name not in results:
            continue
        tools = results[name]["runs"]
        out[name] = {
            tool: {
                key: median_of(runs, figure),
                "seconds": median_of(runs, lambda r: r["seconds"]),
                "wall_seconds": median_of(runs, lambda r: r["wall_seconds"]),
                "receiver_cpu_s_per_gb": median_of(runs, cpu_per_gb),
                "sender_cpu_seconds": median_of(runs, lambda r: r["sender_cpu_seconds"]),
                "receiver_peak_rss_mib": _peak(runs, "receiver_peak_rss_mib"),
                "sender_peak_rss_mib": _peak(runs, "sender_peak_rss_mib"),
                "sessions": _sessions(runs),
            }
            for tool, runs in tools.items()
        }
    if "B6" in results:
        achieved = median_of(results["B6"]["runs"], throughput_mb_s)
        limit = results["B6"]["max_rate"] / 1e6
        out["B6"] = {
            "max_rate_mb_s": limit,
            "throughput_mb_s": achieved,
            "achieved/limit": achieved / limit,
            "seconds": median_of(results["B6"]["runs"], lambda r: r["seconds"]),
            "repetitions": len(results["B6"]["runs"]),
            "measured": f"{results['B6'].get('date', '?')} at {results['B6'].get('commit', '?')}",
        }
    if "B3" in results:
        out["B3"] = {
            settle: {
                figure: {
                    p: median_of(runs, lambda r, f=figure, p=p: r[f][p]) for p in ("p50", "p99")
                }
                for figure in (
                    "close_to_ack_ms",
                    "close_to_stored_ms",
                    "mtime_to_ack_ms",
                    "pump_ms",
                )
            }
            | {"rate_hz": median_of(runs, lambda r: r["rate_hz"])}
            for settle, runs in results["B3"]["runs"].items()
        }
    return out


def _sessions(runs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many runs each protection was negotiated in, as scanxfer's sender logged it (runs
    of the other tools, and of results from before it was recorded, have none)."""
    counts: dict[str, int] = {}
    for run in runs:
        if run.get("session"):
            counts[run["session"]] = counts.get(run["session"], 0) + 1
    return counts


def _peak(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    """The highest peak over the repetitions: a memory bound must hold every time."""
    values = [run[key] for run in runs if run[key] is not None]
    return max(values) if values else None


def get(summary: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(summary, dict) or key not in summary:
            return None
        summary = summary[key]
    return summary


def targets(summary: dict[str, Any], rsync_tool: str, settle: str) -> list[Target]:
    """The issue's targets (TLS off unless said), each decided by a figure from this run."""
    s = summary
    b1, *b1_tls = (
        ratio(get(s, "B1", tool, "throughput_mb_s"), get(s, "B1", "pump", "throughput_mb_s"))
        for tool in SCANXFER_TOOLS
    )
    b2_rsync = ratio(
        get(s, "B2", "scanxfer", "files_per_s"), get(s, "B2", rsync_tool, "files_per_s")
    )
    b2_pump = ratio(get(s, "B2", "scanxfer", "files_per_s"), get(s, "B2", "pump", "files_per_s"))
    b5 = [
        ratio(
            get(s, w, "scanxfer", "receiver_cpu_s_per_gb"),
            get(s, w, "pump", "receiver_cpu_s_per_gb"),
        )
        for w in ("B1", "B2")
    ]
    latency = get(s, "B3", settle, "close_to_ack_ms") or {}
    limited = get(s, "B6", "achieved/limit")
    return [
        Target("B1", "throughput ≥ 0.9 x pump", b1, 0.9, at_most=False),
        *(
            Target("B1", f"throughput with TLS ({cipher}) ≥ 0.7 x pump", figure, 0.7, False)
            for cipher, figure in zip(TLS_CIPHERS, b1_tls, strict=True)
        ),
        Target("B2", f"files/s ≥ 1.5 x {rsync_tool}", b2_rsync, 1.5, at_most=False),
        Target("B2", "files/s ≥ 1.0 x pump", b2_pump, 1.0, at_most=False),
        Target("B3", "close → ACK p50 ≤ 20 ms", latency.get("p50"), 20, at_most=True),
        Target("B3", "close → ACK p99 ≤ 100 ms", latency.get("p99"), 100, at_most=True),
        Target(
            "B4",
            "receiver peak RSS ≤ 100 MiB",
            get(s, "B1", "scanxfer", "receiver_peak_rss_mib"),
            100,
            at_most=True,
        ),
        Target(
            "B4",
            "sender peak RSS ≤ 100 MiB",
            get(s, "B1", "scanxfer", "sender_peak_rss_mib"),
            100,
            at_most=True,
        ),
        Target("B5", "receiver CPU/GB ≤ 1.3 x pump (B1)", b5[0], 1.3, at_most=True),
        Target("B5", "receiver CPU/GB ≤ 1.3 x pump (B2)", b5[1], 1.3, at_most=True),
        Target(
            "B6",
            "max_rate: achieved rate off the limit by ≤ 0.05 of it",
            None if limited is None else abs(limited - 1),
            0.05,
            at_most=True,
        ),
    ]


def stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
