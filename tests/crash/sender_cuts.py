"""Cut the power under a real `scanxfer send --once` with after_send move or delete.

The sender's journal (state_dir), its watch folder and sent/ live on the power-cut file
system; the receiver runs on the normal disk and lives on through every cut, as a Pi does
when the instrument PC loses power.  Each cycle mounts the surviving tree, starts the sender
on it and cuts after a random number of requests (in its journal's commits, in the hand-off's
rename and unlink) or just after an ACK.  After each cut no scan may be gone from the watch
folder and sent/ unless the receiver holds it; at the end every scan is on the receiver once.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from ..integration.harness import (
    GIVE_UP_SECONDS,
    ReceiverProcess,
    sender_config,
    write_big_scan,
)
from ..procs import Proc
from .mount import PowerCutMount, powercut_mount
from .scenario import (
    CutReport,
    CutSchedule,
    acked_in,
    cut_power,
    kill_traced,
    tree_digests,
    write_small_scans,
)

AFTER_ACK = 4
# The sender's first line after reading its journal and the watch folder.
_READY = r"sending \d+ files|nothing to send"
# The operations where durability is decided, to cut at on purpose.
TARGETS = ("rename", "unlink", "mkdir", "fsync", "create")
FIRST_WORK = 1500  # requests, before one cycle measured them


class SenderCuts:
    def __init__(
        self, root: Path, fs: PowerCutMount, receiver: ReceiverProcess, rng: random.Random
    ) -> None:
        self.root, self.fs, self.receiver, self.rng = root, fs, receiver, rng
        self.report = CutReport("sender")
        self.originals: dict[str, str] = {}  # every scan ever written, by relative path
        self.schedule = CutSchedule(rng, FIRST_WORK, TARGETS)
        self.rounds = 0
        self.big_mib = 0

    def prepare(self, big_mib: int) -> None:
        self.big_mib = big_mib
        watch = self.fs.live / "watch"
        # There, durably, before the first start, as after an install: so the journal's own
        # commits are what the cuts test, not the loss of a state folder never synced.
        (self.fs.live / "state").mkdir()
        write_small_scans(watch, "first", 30, 5000)
        write_big_scan(watch / "big" / "volume.npy", big_mib)
        self.originals = tree_digests(watch)

    def run(self, cuts: int, after_send: str) -> None:
        for cycle in range(cuts):
            self._cycle(cycle, after_send)
        self._finish(after_send)

    def _config(self, after_send: str) -> Path:
        mnt = self.fs.mnt
        return sender_config(
            self.root / "sender.yaml",
            self.receiver.port,
            mnt / "watch",
            state_dir=str(mnt / "state"),
            after_send=after_send,
        )

    def _start_sender(self, after_send: str) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "scanxfer",
            "send",
            "-c",
            str(self._config(after_send)),
            "--once",
        ]
        return Proc("sender", self.fs.traced(argv))

    def _cycle(self, cycle: int, after_send: str) -> None:
        after_ack = cycle % AFTER_ACK == AFTER_ACK - 1
        self.fs.mount(*((0, "") if after_ack else self.schedule.next_cut()))
        self.report.cut_points += 1
        sender = self._start_sender(after_send)
        where = "?"
        try:
            where = self._wait_for_cut(sender, after_ack)
        finally:
            cut_power(self.fs, sender)
        self.report.acked.update(f"{after_send}:{path}" for path in acked_in(sender.log))
        self.report.cut_at[where] += 1
        self._check_survivor(f"{after_send} cut {cycle}")
        if where == "at rest":
            self._more_scans()

    def _wait_for_cut(self, sender: Proc, after_ack: bool) -> str:
        """Until the cut is due; where it falls (see `CutReport.cut_at`)."""
        acks = len(acked_in(sender.log))
        started = False
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while time.monotonic() < deadline:
            if not started and sender.stamped(_READY):
                started = True
                self.schedule.started(self.fs.count())
            if self.fs.poll_frozen(0.02):
                return self.fs.frozen_before
            if after_ack and len(acked_in(sender.log)) > acks:
                return "after ACK"
            if sender.returncode is not None:
                if sender.returncode != 0:
                    self.report.restarts_failed.append(sender.log_tail())
                self.schedule.ran_out_of_work(self.fs.count())
                return "at rest"
        raise AssertionError(f"no cut came:\n{sender.log}")

    def _more_scans(self) -> None:
        """More to send, so the next cuts land in a transfer too: written between mounts, so
        they are there for sure (the model takes what it finds at the mount as durable)."""
        self.rounds += 1
        watch = self.fs.live / "watch"
        name = f"round{self.rounds}"
        write_small_scans(watch, name, 10, 6000 + self.rounds * 100)
        self.originals.update(
            (f"{name}/{path}", held) for path, held in tree_digests(watch / name).items()
        )

    def _check_survivor(self, when: str) -> None:
        """Every scan is still in the watch folder or sent/, intact, or on the receiver."""
        kept = tree_digests(self.fs.live / "watch")
        sent = tree_digests(self.fs.live / "sent") if (self.fs.live / "sent").exists() else {}
        received = tree_digests(self.receiver.incoming)
        for path, original in self.originals.items():
            if original not in (kept.get(path), sent.get(path), received.get(path)):
                self.report.lost.append(f"{when}: {path}")
        for place, held in (("watch", kept), ("sent", sent)):
            for path, content in held.items():
                if self.originals.get(path) != content:
                    self.report.partials_visible.append(f"{when}: {place}/{path}")

    def _finish(self, after_send: str) -> None:
        """An uncut run to the end: every scan on the receiver once, none left to send."""
        self.fs.mount()
        sender = self._start_sender(after_send)
        try:
            assert sender.wait(GIVE_UP_SECONDS) == 0, sender.log
        finally:
            kill_traced(sender)
            self.fs.unmount()
        received = tree_digests(self.receiver.incoming)
        self.report.lost += [
            f"{after_send} at the end: {path} not on the receiver"
            for path, held in self.originals.items()
            if received.get(path) != held
        ]
        self.report.partials_visible += [
            f"{after_send} at the end: {path} stored twice or never sent"
            for path in received.keys() - self.originals.keys()
        ]
        assert tree_digests(self.fs.live / "watch") == {}
        sent = self.fs.live / "sent"
        expected = self.originals if after_send == "move" else {}
        assert (tree_digests(sent) if sent.exists() else {}) == expected


def run_sender_cuts(root: Path, cuts: int, big_mib: int, seed: int) -> CutReport:
    """Half the cuts with after_send: move, half with delete, each on fresh folders."""
    rng = random.Random(seed)
    reports = []
    for after_send in ("move", "delete"):
        receiver = ReceiverProcess(root / after_send / "receiver").start()
        try:
            with powercut_mount(root / after_send / "fs") as fs:
                cutter = SenderCuts(root / after_send, fs, receiver, rng)
                cutter.prepare(big_mib)
                cutter.run(cuts // 2, after_send)
                reports.append(cutter.report)
        finally:
            receiver.stop()
    return _merged(reports)


def _merged(reports: list[CutReport]) -> CutReport:
    merged = CutReport("sender")
    for report in reports:
        merged.cut_points += report.cut_points
        merged.acked |= report.acked
        merged.lost += report.lost
        merged.partials_visible += report.partials_visible
        merged.restarts_failed += report.restarts_failed
        merged.cut_at += report.cut_at
    return merged
