"""Cut the power under a real `scanxfer receive` at many points while real senders deliver.

The receiver's incoming folder, partial folder, keys and TLS identity all live on the
power-cut file system; the senders and their journals on the normal disk.  Each cycle mounts
the surviving tree, starts the receiver on it (under strace, for its syncfs) and a `send
--once`, and cuts the power: after a random number of file system requests (anywhere: in the
receiver's start, a write, a group commit, a link into place, a directory fsync), or just
after the sender logs an ACK.  After each cut the surviving tree is checked; at the end one
last cycle runs to completion and the tree must equal the source.
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from pathlib import Path

from scanxfer.store import PARTIAL_FOLDER

from ..integration.harness import (
    GIVE_UP_SECONDS,
    install_credentials,
    send_once_in_background,
    sender_config,
    write_big_scan,
    write_scan,
)
from ..procs import Proc
from .mount import PowerCutMount, powercut_mount
from .scenario import (
    CutReport,
    CutSchedule,
    acked_in,
    cut_power,
    digest,
    kill_traced,
    tree_digests,
    unclashed,
    write_mixed_scans,
    write_small_scans,
)

_LISTENING = r"listening on \S+:(\d+)"
# Every AFTER_ACK-th cut waits for an ACK instead of counting requests.
AFTER_ACK = 4
# The operations where durability is decided, to cut at on purpose.
TARGETS = ("create", "fsync", "link", "unlink", "fsyncdir", "rename", "mkdir")
FIRST_WORK = 2000  # requests, before one cycle measured them


class ReceiverCuts:
    def __init__(self, root: Path, fs: PowerCutMount, rng: random.Random) -> None:
        self.root, self.fs, self.rng = root, fs, rng
        self.scans = root / "scans"
        self.report = CutReport("receiver")
        self.preplaced: dict[str, str] = {}
        self.acked: dict[str, str] = {}  # source path -> stored path, over all cycles
        self.source_digests: dict[str, str] = {}
        self.schedule = CutSchedule(rng, FIRST_WORK, TARGETS)
        self.big_mib = 0
        self.rounds = 0  # of scans added after a transfer ended before its cut

    def prepare(self, big_mib: int, bigs: int) -> None:
        """The scans, and what the receiver holds before: a duplicate and a clash."""
        self.big_mib = big_mib
        write_mixed_scans(self.scans, big_mib, bigs)
        incoming = self.fs.live / "incoming"
        shutil.copy2(self.scans / "dup" / "same.npy", _made(incoming / "dup") / "same.npy")
        write_scan(incoming / "clash" / "other.npy", (4096,), 2000)  # other content, same name
        self.preplaced = tree_digests(incoming)
        install_credentials(self.fs.live / "state")

    def run(self, cuts: int) -> CutReport:
        for cycle in range(cuts):
            self._cycle(cycle)
        self._finish()
        return self.report

    def _cycle(self, cycle: int) -> None:
        after_ack = cycle == 0 or cycle % AFTER_ACK == AFTER_ACK - 1
        self.fs.mount(*((0, "") if after_ack else self.schedule.next_cut()))
        self.report.cut_points += 1
        receiver = self._start_receiver(f"cut {cycle}")
        if receiver is None:
            self.report.cut_at[f"{self.fs.frozen_before} (starting)"] += 1
            self._check_survivor(f"cut {cycle}, while starting")
            return
        sender = None
        try:
            if cycle == 0:
                sender = self._interrupt_and_resume(receiver)
            else:
                sender = send_once_in_background(self._sender_config(receiver))
            self._wait_for_cut(sender, after_ack)
        finally:
            cut_power(self.fs, sender, receiver)
        self.report.syncfs_seen += self.fs.syncs_before_cut
        acked = acked_in(sender.log)
        self.acked.update(acked)
        self.report.acked.update(acked)
        self._check_survivor(f"cut {cycle}")

    def _start_receiver(self, when: str) -> Proc | None:
        """The receiver on the surviving tree; None if the cut came while it started."""
        mnt = self.fs.mnt
        argv = [
            sys.executable,
            "-m",
            "scanxfer",
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            str(mnt / "incoming"),
            "--state-dir",
            str(mnt / "state"),
        ]
        receiver = Proc("receiver", self.fs.traced(argv))
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not receiver.stamped(_LISTENING):
            ended = receiver.returncode is not None or time.monotonic() > deadline
            if self.fs.poll_frozen(0.05) or ended:
                if not self.fs.frozen:
                    self.report.restarts_failed.append(f"{when}: {receiver.log_tail()}")
                cut_power(self.fs, receiver)
                return None
        self.schedule.started(self.fs.count())
        return receiver

    def _sender_config(self, receiver: Proc, **extra: str) -> Path:
        port = receiver.wait_for(_LISTENING, 1).group(1)
        return sender_config(self.root / "sender.yaml", int(port), self.scans, **extra)

    def _interrupt_and_resume(self, receiver: Proc) -> Proc:
        """A first sender, slowed down, killed mid-way through a big scan; a new one resumes it."""
        sender = send_once_in_background(self._sender_config(receiver, max_rate="4MB"))
        partial = self.fs.live / "incoming" / PARTIAL_FOLDER
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not any(p.stat().st_size > 1 << 20 for p in partial.glob("*.part")):
            if time.monotonic() > deadline or sender.returncode is not None:
                raise AssertionError(f"no big partial appeared:\n{receiver.log}\n{sender.log}")
            time.sleep(0.05)
        sender.process.kill()
        sender.wait(60)
        self.acked.update(acked_in(sender.log))
        return send_once_in_background(self._sender_config(receiver))

    def _wait_for_cut(self, sender: Proc, after_ack: bool) -> None:
        """Until the file system froze by itself, or (after_ack) an ACK came; or all is sent.

        When all is sent, more scans are written, so that the next cuts land in a transfer too.
        """
        acks = len(acked_in(sender.log))
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while time.monotonic() < deadline:
            if self.fs.poll_frozen(0.02):
                self.report.cut_at[self.fs.frozen_before] += 1
                return
            if after_ack and len(acked_in(sender.log)) > acks:
                self.report.cut_at["after ACK"] += 1
                return
            if sender.returncode is not None:
                self.report.cut_at["at rest"] += 1
                self.schedule.ran_out_of_work(self.fs.count())
                self._more_scans()
                return
        raise AssertionError(f"no cut came:\n{sender.log}")

    def _more_scans(self) -> None:
        self.rounds += 1
        round_name = f"round{self.rounds}"
        write_small_scans(self.scans, round_name, 20, self.rounds * 100)
        if self.rounds % 3 == 0:
            write_big_scan(self.scans / round_name / "big.npy", self.big_mib)

    def _check_survivor(self, when: str) -> None:
        """ACKed files are all there, intact; no final name holds bytes it was not sent."""
        incoming = self.fs.live / "incoming"
        stored = tree_digests(incoming)
        for source, path in self.acked.items():
            if stored.get(path) != self._source_digest(source):
                self.report.lost.append(f"{when}: {path}")
        for path, held in stored.items():
            # What was there before is never overwritten; anything else is a sent scan, whole.
            allowed = self.preplaced.get(path) or self._source_digest(unclashed(path))
            if held != allowed:
                self.report.partials_visible.append(f"{when}: {path}")

    def _source_digest(self, relpath: str) -> str | None:
        """The digest of a scan (they never change once written); None if there is none."""
        if relpath not in self.source_digests and (self.scans / relpath).is_file():
            self.source_digests[relpath] = digest(self.scans / relpath)
        return self.source_digests.get(relpath)

    def _finish(self) -> None:
        """One last run, uncut, to the end: the tree must be the source's, clash beside."""
        self.fs.mount()
        receiver = self._start_receiver("last start")
        assert receiver is not None, self.report.restarts_failed
        try:
            sender = send_once_in_background(self._sender_config(receiver))
            assert sender.wait(GIVE_UP_SECONDS) == 0, sender.log
            self.acked.update(acked_in(sender.log))
        finally:
            kill_traced(receiver)
            self.fs.unmount()
            receiver.wait(60)
        expected = dict(self.preplaced)
        for path, held in tree_digests(self.scans).items():
            if path in self.preplaced and self.preplaced[path] != held:
                path = path.replace(".npy", "~1.npy")
            expected[path] = held
        stored = tree_digests(self.fs.live / "incoming")
        for path, held in expected.items():
            if stored.get(path) != held:
                self.report.lost.append(f"at the end: {path} missing or changed")
        self.report.partials_visible += [
            f"at the end: {path} not sent" for path in stored.keys() - expected.keys()
        ]


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_receiver_cuts(root: Path, cuts: int, big_mib: int, bigs: int, seed: int) -> CutReport:
    with powercut_mount(root / "fs") as fs:
        cutter = ReceiverCuts(root, fs, random.Random(seed))
        cutter.prepare(big_mib, bigs)
        return cutter.run(cuts)
