"""W1: what the writer check (scanxfer.watcher.writers) costs per file.

    python -m tests.bench --only W1 --merge

The sender asks it of every scan before sending and again before after_send touches it, so
its cost is set against the check the watcher already makes of every candidate, timed in the
same process one after the other: os.stat and npy_complete (size against header). The lease
is timed over FILES small scans; the /proc search, the fallback when no lease can be taken,
reads every process's fd table per file, so it is timed over the first PROC_FILES of them.
Its cost grows with the processes and open fds on the machine, recorded alongside.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scanxfer.npy import npy_complete
from scanxfer.watcher.writers import WriterCheck, WriterState, _check, check_writers

from . import report

FILES = 2000
PROC_FILES = 100
METHODS = ("reference", "lease", "proc")
LABELS = {
    "reference": "reference: os.stat + npy_complete (the watcher's size and header check)",
    "lease": "writer check by lease (check_writers)",
    "proc": "writer check by /proc search (the fallback without a lease)",
}


def measure(work: Path, reps: int) -> dict[str, Any]:
    paths = _scans(work / "W1")
    verdicts = {"lease": check_writers(paths[0]), "proc": _by_proc(paths[0])}
    if verdicts["lease"] != WriterCheck(WriterState.FREE, "lease", ""):
        raise RuntimeError(f"W1: no lease in {work}: {verdicts['lease']}; use --work elsewhere")
    timed: dict[str, tuple[Callable[[Path], object], list[Path]]] = {
        "reference": (_reference, paths),
        "lease": (check_writers, paths),
        "proc": (_by_proc, paths[:PROC_FILES]),
    }
    runs: dict[str, list[float]] = {method: [] for method in METHODS}
    processes, fds = _population()
    for rep in range(reps):
        for method in METHODS[rep % 3 :] + METHODS[: rep % 3]:
            runs[method].append(_us_per_file(*timed[method]))
        print(
            "W1 {}/{}: {}".format(
                rep + 1, reps, ", ".join(f"{m} {runs[m][-1]:,.1f} µs/file" for m in METHODS)
            ),
            flush=True,
        )
    return {
        "date": report.stamp(),
        "machine": report.machine(work),
        "load_average": report.load_average(),
        "files": FILES,
        "proc_files": PROC_FILES,
        "file_bytes": paths[0].stat().st_size,
        "processes": processes,
        "open_fds": fds,
        "proc_verdict": verdicts["proc"].state.value,
        "runs": runs,
    }


def _scans(directory: Path) -> list[Path]:
    """FILES complete little scans; they stay until the work directory goes (see run.py)."""
    directory.mkdir(parents=True)
    array = np.arange(64, dtype=np.uint16)
    paths = [directory / f"scan_{n:05d}.npy" for n in range(FILES)]
    for path in paths:
        np.save(path, array)
    if not npy_complete(paths[0]):
        raise RuntimeError(f"W1: {paths[0]} should be a complete .npy file")
    return paths


def _reference(path: Path) -> bool:
    os.stat(path)
    return npy_complete(path)


def _by_proc(path: Path) -> WriterCheck:
    return _check(path, try_lease=False)


def _us_per_file(check: Callable[[Path], object], paths: list[Path]) -> float:
    started = time.perf_counter_ns()
    for path in paths:
        check(path)
    return (time.perf_counter_ns() - started) / 1000 / len(paths)


def _population() -> tuple[int, int]:
    """Processes, and the open fds of those we may inspect: what a /proc search walks."""
    processes = fds = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            processes += 1
            try:
                fds += len(os.listdir(f"{entry.path}/fd"))
            except OSError:
                continue
    return processes, fds


def summarize(section: dict[str, Any]) -> dict[str, Any]:
    """Median µs per file of each method, and each divided by the reference's."""
    medians = {m: report.median_of(section["runs"][m], lambda us: us) for m in METHODS}
    return {
        m: {"us_per_file": us, "ratio_to_reference": report.ratio(us, medians["reference"])}
        for m, us in medians.items()
    }


def rows(section: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The W1 part of results.md."""
    m = section["machine"]
    return [
        "## Writer check (W1)",
        "",
        "Does any process hold the scan open for writing or mapped shared-writable? Cost per "
        f"file, median of {len(section['runs']['lease'])} repetitions over {section['files']:,} "
        f"files of {section['file_bytes']} bytes (the /proc search over the first "
        f"{section['proc_files']}), each method divided by the reference timed in the same "
        f"process. Measured {section['date']} at {m['commit']} on {m['nproc']} x "
        f"{m['cpu_model']}, Linux {m['kernel']}, {m['filesystem']}, load average "
        f"{section['load_average']:.2f}, with {section['processes']} processes holding "
        f"{section['open_fds']:,} open fds (the /proc search walks them all; its verdict "
        f"here: {section['proc_verdict']}).",
        "",
        "| Method | µs per file | ÷ reference |",
        "|---|--:|--:|",
        *(
            f"| {LABELS[name]} | {fig['us_per_file']:,.1f} | {fig['ratio_to_reference']:.2f} |"
            for name, fig in summary.items()
        ),
        "",
    ]
