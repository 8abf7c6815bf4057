"""What the crash tests share: the scans to send, the checks of a surviving tree, the table."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import re
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from scanxfer.store import PARTIAL_FOLDER

from ..integration.harness import write_big_scan, write_scan
from ..procs import Proc
from .mount import PowerCutMount

# The sender's ACK lines: "sent REL (size, speed)[ as STORED (...)]" and a duplicate's.
_SENT = re.compile(r"sent (\S+) \([^)]*\)(?: as (\S+) )?")
_DUPLICATE = re.compile(r"(\S+) is already on the receiver as (\S+)")
_CLASH = re.compile(r"^(.*)~[1-9][0-9]*(\.[^./]*)$")


@dataclass
class CutReport:
    """One row of `make crash-test`'s table."""

    side: str
    cut_points: int = 0
    acked: set[str] = field(default_factory=set)
    lost: list[str] = field(default_factory=list)  # ACKed before a cut, gone or changed after
    partials_visible: list[str] = field(default_factory=list)  # final names with other bytes
    restarts_failed: list[str] = field(default_factory=list)
    # Where the cuts fell: the operation a cut by count stopped, "after ACK", "at rest".
    cut_at: Counter[str] = field(default_factory=Counter)
    syncfs_seen: int = 0  # by the power-cut file system, over all cycles

    def row(self) -> tuple[str, int, int, int, int, int]:
        return (
            self.side,
            self.cut_points,
            len(self.acked),
            len(self.lost),
            len(self.partials_visible),
            len(self.restarts_failed),
        )

    def assert_clean(self) -> None:
        assert not self.lost, f"ACKed files lost by a power cut: {self.lost}"
        assert not self.partials_visible, (
            f"partial files under final names: {self.partials_visible}"
        )
        assert not self.restarts_failed, f"restarts that failed: {self.restarts_failed}"


class CutSchedule:
    """Where to cut in the next cycle: the N-th request from the mount, or of one operation.

    A cycle is the program's start (reading the state, checking the folders: its requests grow
    with the tree) and then its work.  Most cuts fall in the work, spread over as many requests
    as the last cycle that ran out of work needed; some fall in the start; some on the N-th
    request of an operation where durability is decided (`targets`: a link into place, a
    rename, a directory fsync...), which a count over all requests would rarely hit.
    """

    IN_START = 0.15
    ON_TARGET = 0.3
    MIN_WORK = 300
    TARGET_RANGE = 8

    def __init__(self, rng: random.Random, first_work: int, targets: tuple[str, ...]) -> None:
        self.rng = rng
        self.targets = itertools.cycle(targets)  # in turn, so that each is cut at
        self.start = 0  # requests until the program was ready, last time
        self.work = first_work

    def next_cut(self) -> tuple[int, str]:
        """(N, operation): freeze before the N-th request of it ("": of any operation)."""
        draw = self.rng.random()
        if draw < self.ON_TARGET:
            return self.rng.randint(1, self.TARGET_RANGE), next(self.targets)
        if not self.start or draw < self.ON_TARGET + self.IN_START:
            return self.rng.randint(1, max(self.start, self.MIN_WORK)), ""
        return self.start + self.rng.randint(1, self.work), ""

    def started(self, requests: int) -> None:
        self.start = requests

    def ran_out_of_work(self, requests: int) -> None:
        self.work = max(self.MIN_WORK, requests - self.start)


def digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def tree_digests(root: Path) -> dict[str, str]:
    """Every regular file under `root` (the partial folder left out) by relative path."""
    return {
        path.relative_to(root).as_posix(): digest(path)
        for path in root.rglob("*")
        if path.is_file() and PARTIAL_FOLDER not in path.relative_to(root).parts
    }


def acked_in(log: str) -> dict[str, str]:
    """What the sender's log says the receiver ACKed: source path -> stored path."""
    acked = {m.group(1): m.group(2) or m.group(1) for m in _SENT.finditer(log)}
    acked.update((m.group(1), m.group(2)) for m in _DUPLICATE.finditer(log))
    return acked


def unclashed(path: str) -> str:
    """`a/b~2.npy` -> `a/b.npy`: the name a kept-beside file was sent under."""
    match = _CLASH.match(path)
    return match.group(1) + match.group(2) if match else path


def write_small_scans(scans: Path, prefix: str, count: int, seed: int) -> None:
    for index in range(count):
        write_scan(scans / prefix / f"run{index % 4}" / f"s{index:03}.npy", (2048,), seed + index)


def write_mixed_scans(scans: Path, big_mib: int, bigs: int) -> None:
    """Many small scans in nested folders, `bigs` big ones, and the clash and duplicate pair."""
    write_small_scans(scans, "first", 40, 0)
    for index in range(bigs):
        write_big_scan(scans / "big" / f"volume{index}.npy", big_mib + index)
    write_scan(scans / "dup" / "same.npy", (4096,), 1000)
    write_scan(scans / "clash" / "other.npy", (4096,), 1001)


def cut_power(fs: PowerCutMount, *children: Proc | None) -> None:
    """The power cut: freeze the file system, kill the programs on it, drop what was not durable.

    The programs are reaped whatever fails: unmounting ends the daemon, which frees a
    process that the kernel holds in a request of the frozen file system.
    """
    running = [child for child in children if child is not None]
    try:
        fs.freeze()
        for child in running:
            kill_traced(child)
        fs.cut()
    finally:
        for child in running:
            kill_traced(child)
        fs.unmount()  # nothing left to do after a cut
        for child in running:
            child.wait(60)


def kill_traced(child: Proc) -> None:
    """SIGKILL a process started under strace, and strace: the tracee first, or it runs on."""
    for pid in _descendants(child.pid):
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signal.SIGKILL)
    if child.returncode is None:
        child.process.kill()


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(child) for child in children]
    for child in list(found):
        found.extend(_descendants(child))
    return found
