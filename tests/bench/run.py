"""`make bench`: scanxfer against a bare socket pump and an rsync daemon, on loopback.

    python -m tests.bench [--reps N] [--only B1,B2,B3,B6,W1] [--merge] [--work DIR] [--keep]

B1 moves one 1 GiB scan, B2 2,000 scans of 64 KiB (both also give B4, peak memory, and B5,
receiver CPU per GB); B3 times scans written at 20 Hz from close to durable ACK; B6 moves the
1 GiB scan with a bandwidth limit (max_rate) and compares the rate achieved with it; W1 times
the writer check per file (a few seconds).  Writes bench/results.json and bench/results.md and
prints the table; with --merge, the workloads run now replace theirs in the last run's files
and the others stay.  B1-B3 need about 5 GB free where the work directory is (a fresh one
under $TMPDIR or /tmp, removed afterwards).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from ..procs import Proc
from . import contenders, latency, report, table, writers
from .contenders import REPO, Run, python_module

OUT_DIR = REPO / "bench"
NEEDED_BYTES = 5_200_000_000
# Received trees of more files than this stay until the work directory goes, at the end.
# ext4 passes over inodes freed in the last minute when it allocates new ones, so a run
# after the deletion of thousands of files spent most of its time creating them: a cost
# of the harness's cleanup, landing on whichever tool came next.
DELETE_AFTER_RUN_MAX_FILES = 10
B3_INTERVAL = 0.032  # plus simulate's 4 paced writes per file: about 20 files a second here
B3_SETTLES = ("0", "0.05")  # seconds: no settling (inotify close only), then a short one
# Variables that would make a child talk to systemd if `make bench` runs inside a unit.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


@dataclass(frozen=True)
class Workload:
    name: str
    count: int
    shape: str  # uint16; the .npy header adds 128 bytes per file


BULK = (Workload("B1", 1, "16384x32768"), Workload("B2", 2000, "128x256"))
RATE_LIMITED = Workload("B6", 1, "16384x32768")
# B6's max_rate, bytes per second: well below what loopback carries, so the limit is what
# holds the transfer back.
B6_MAX_RATE = 100_000_000
WORKLOADS = ("B1", "B2", "B3", "B6", "W1")


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = _parse(argv)
    for name in SYSTEMD_VARIABLES:
        os.environ.pop(name, None)
    work = Path(tempfile.mkdtemp(prefix="scanxfer-bench-", dir=args.work))
    try:
        _require_space(work, args.only)
        results = measure(args, work)
        results["load_average_after"] = report.load_average()
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    publish(_merged(results, args.only) if args.merge else results)
    print(f"make bench took {(time.monotonic() - started) / 60:.1f} min")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each run (5)")
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"workloads to run ({','.join(WORKLOADS)})"
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the other workloads of bench/results.json"
    )
    parser.add_argument("--b3-files", type=int, default=200, help="scans per B3 run (200)")
    parser.add_argument("--work", type=Path, help="parent of the work directory ($TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    args.only = {name.strip().upper() for name in args.only.split(",")}
    if not args.only <= set(WORKLOADS) or args.reps < 1:
        parser.error(
            "--only takes B1, B2, B3, B6 and/or W1 (B4 and B5 come from B1 and B2); --reps >= 1"
        )
    return args


def _require_space(work: Path, only: set[str]) -> None:
    if not only & {"B1", "B2", "B3", "B6"}:
        return  # W1's files take a few MB
    free = shutil.disk_usage(work).free
    if free < NEEDED_BYTES:
        raise SystemExit(
            f"make bench needs {NEEDED_BYTES / 1e9:.1f} GB free in {work.parent}, has "
            f"{free / 1e9:.1f} GB: free some space or set TMPDIR to a roomier disk"
        )


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    problem = contenders.rsync_problem()
    rsync_tool = "rsync --fsync" if problem is None else "rsync (no --fsync)"
    results: dict[str, Any] = {
        "date": report.stamp(),
        "machine": report.machine(work),
        "rsync_version": contenders.rsync_version(),
        "rsync_tool": rsync_tool,
        "rsync_problem": problem,
        "repetitions": args.reps,
        "load_average_before": report.load_average(),
        "tls": report.TLS_NOTE,
    }
    tools: dict[str, Callable[[Path, Path, int, int], Run]] = {
        "pump": contenders.run_pump,
        "scanxfer": contenders.run_scanxfer,
        # TLS with each cipher the receiver can choose (tls_cipher), whatever this CPU is:
        # the Pi budget in the README starts from both (issue 16).
        **{
            report.tls_tool(cipher): functools.partial(
                contenders.run_scanxfer, tls=True, cipher=cipher
            )
            for cipher in report.TLS_CIPHERS
        },
        # The metrics endpoint on and scraped: what monitoring costs (issue 17).
        "scanxfer metrics": functools.partial(contenders.run_scanxfer, metrics=True),
    }
    if shutil.which("rsync") is not None:
        tools[rsync_tool] = lambda *a: contenders.run_rsync(*a, fsync=problem is None)
    for workload in BULK:
        if workload.name in args.only:
            results[workload.name] = _bulk(workload, tools, args.reps, work)
    if "B3" in args.only:
        results["B3"] = _latency(args.reps, args.b3_files, work)
    if "B6" in args.only:
        results["B6"] = _rate_limited(args.reps, work)
    if "W1" in args.only:  # last: its 2,000 files must not be freed before the others run
        results["W1"] = writers.measure(work, args.reps)
    return results


def _bulk(
    workload: Workload,
    tools: dict[str, Callable[[Path, Path, int, int], Run]],
    reps: int,
    work: Path,
) -> dict[str, Any]:
    source = work / "data" / workload.name
    generate(source, workload)
    expected = _digests(source)
    size = sum(length for length, _ in expected)
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    _warm_up(source, work / "runs" / f"{workload.name}-warm-up", workload.count, size)
    for rep in range(reps):
        for tool in _rotated(list(tools), rep):
            target = work / "runs" / f"{workload.name}-{tool.replace(' ', '-')}-{rep}"
            target.mkdir(parents=True)
            os.sync()  # earlier runs' writes and deletions must not land inside this one
            run = tools[tool](source, target, workload.count, size)
            _check(target, expected, tool)
            if workload.count <= DELETE_AFTER_RUN_MAX_FILES:
                shutil.rmtree(target)
            runs[tool].append(run.as_dict())
            rate = (
                f"{size / run.seconds / 1e6:,.0f} MB/s, {workload.count / run.seconds:,.0f} files/s"
            )
            print(
                f"{workload.name} {rep + 1}/{reps} {tool:>20}: {run.seconds:6.2f} s, {rate}",
                flush=True,
            )
    shutil.rmtree(source)
    return {
        "files": workload.count,
        "bytes": size,
        "shape": workload.shape,
        # Its own stamp: --merge may put it beside sections measured at another commit.
        **_stamp(work),
        "runs": runs,
    }


def _stamp(work: Path) -> dict[str, str]:
    """When and at which commit a section was measured."""
    return {"date": report.stamp(), "commit": report.machine(work)["commit"]}


def _rate_limited(reps: int, work: Path) -> dict[str, Any]:
    """B6: scanxfer (tls: false) sends the 1 GiB scan with max_rate set, `reps` times."""
    workload = RATE_LIMITED
    source = work / "data" / workload.name
    generate(source, workload)
    expected = _digests(source)
    size = sum(length for length, _ in expected)
    runs = []
    for rep in range(reps):
        target = work / "runs" / f"{workload.name}-{rep}"
        target.mkdir(parents=True)
        os.sync()
        run = contenders.run_scanxfer(source, target, workload.count, size, max_rate=B6_MAX_RATE)
        _check(target, expected, "scanxfer max_rate")
        shutil.rmtree(target)
        runs.append(run.as_dict())
        achieved = size / run.seconds
        print(
            f"B6 {rep + 1}/{reps} max_rate {B6_MAX_RATE / 1e6:.0f} MB/s: {run.seconds:6.2f} s, "
            f"{achieved / 1e6:.1f} MB/s = {achieved / B6_MAX_RATE:.3f} x the limit",
            flush=True,
        )
    shutil.rmtree(source)
    return {
        "files": workload.count,
        "bytes": size,
        "max_rate": B6_MAX_RATE,
        **_stamp(work),
        "runs": runs,
    }


def _warm_up(source: Path, target: Path, count: int, size: int) -> None:
    """One untimed pump run: on a VM the first write into memory not touched for a while
    costs more, and that must not fall on whichever tool happens to go first."""
    target.mkdir(parents=True)
    contenders.run_pump(source, target, count, size)
    shutil.rmtree(target)


def _rotated(tools: list[str], rep: int) -> list[str]:
    """A different tool goes first in each repetition, so slow drift hits all alike."""
    shift = rep % len(tools)
    return tools[shift:] + tools[:shift]


def generate(directory: Path, workload: Workload) -> None:
    print(
        f"{workload.name}: writing {workload.count} scan(s) of {workload.shape} uint16", flush=True
    )
    argv = ["simulate", "--dir", str(directory), "--count", str(workload.count)]
    writer = Proc(
        "simulate",
        python_module("scanxfer", "-q", *argv, "--interval", "0", "--shape", workload.shape),
    )
    if writer.wait(contenders.GIVE_UP_SECONDS) != 0:
        raise RuntimeError(f"simulate failed:\n{writer.log_tail()}")


def _files(directory: Path) -> Iterator[Path]:
    """The .npy files below `directory` in name order; partials end in .part and are skipped."""
    return iter(sorted(directory.rglob("*.npy"), key=lambda p: p.name))


def _digests(directory: Path) -> list[tuple[int, bytes]]:
    out = []
    for path in _files(directory):
        hasher = xxhash.xxh3_128()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
        out.append((path.stat().st_size, hasher.digest()))
    return out


def _check(received: Path, expected: list[tuple[int, bytes]], tool: str) -> None:
    """A benchmark of a transfer that lost or mangled a file would be worthless."""
    got = _digests(received)
    if got != expected:
        bad = sum(a != b for a, b in zip(got, expected, strict=False))
        raise RuntimeError(
            f"{tool} delivered {len(got)} files, {bad} of them different, for "
            f"{len(expected)} sent; see the work directory (run with --keep)"
        )


def _latency(reps: int, files: int, work: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {settle: [] for settle in B3_SETTLES}
    for rep in range(reps):
        for settle in B3_SETTLES:
            target = work / "runs" / f"B3-{settle}-{rep}"
            os.sync()
            run = latency.run_latency(target, files, B3_INTERVAL, float(settle))
            shutil.rmtree(target)
            runs[settle].append(run.as_dict())
            ack = latency.summary(run.close_to_ack_ms)
            print(
                f"B3 {rep + 1}/{reps} settle {settle} s: close → ACK p50 {ack['p50']:.1f} ms, "
                f"p99 {ack['p99']:.1f} ms at {run.rate_hz:.1f} Hz",
                flush=True,
            )
    return {"files": files, "interval_seconds": B3_INTERVAL, **_stamp(work), "runs": runs}


def _merged(results: dict[str, Any], only: set[str]) -> dict[str, Any]:
    """--merge: the sections measured now, put into the last run's results, whose header
    (date, machine, load averages) keeps describing its own sections; W1 carries its own."""
    path = OUT_DIR / "results.json"
    try:
        merged: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"--merge needs {path} from an earlier run: drop --merge") from None
    merged.update({name: results[name] for name in only})
    return merged


def publish(results: dict[str, Any]) -> None:
    """Write results.json and results.md and print the table; a missed target is a finding,
    not a failure of `make bench`."""
    summary = report.summarize(results)
    if "W1" in results:
        summary["W1"] = writers.summarize(results["W1"])
    verdicts = report.targets(summary, results["rsync_tool"], B3_SETTLES[0])
    results["summary"] = summary
    results["targets"] = [t.as_dict() for t in verdicts]
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    text = table.render(results, summary, verdicts)
    (OUT_DIR / "results.md").write_text(text)
    print("\n" + text)
    print(f"written: {OUT_DIR / 'results.json'}, {OUT_DIR / 'results.md'}")
