"""Proof from the real receiver's system calls that an ACK means on disk (issue 15, part 2).

The receiver runs under strace on the ordinary file system of the tests, with ``tls: false`` so
that its ACK frames can be read in the trace, and real senders deliver to it: many small files
(group commit), big ones (deferred digest, write-back) and one resumed after its sender was
killed.  `syscall_order.check_trace` then holds every ACK against the syncs before it.  Copies
of the package with one sync taken out show that the check catches what it claims to; a race
staged by strace (one connection held right after its mkdir) keeps a bug it found fixed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import scanxfer
from scanxfer import protocol as p

from ..procs import Proc
from .faultproxy import FaultProxy, Plan
from .harness import (
    ReceiverProcess,
    assert_identical,
    send_once,
    send_once_in_background,
    sender_config,
    wait_until,
    write_big_scan,
    write_scan,
)
from .syscall_order import STRACE_OPTIONS, Report, check_trace, parse_calls
from .test_resume import stable_partial_size

MIB = 1 << 20
SMALL_FILES = 60


@dataclass(frozen=True)
class Break:
    """One durability step taken out of a copy of the package: `old` becomes `new` in `module`."""

    module: str
    old: str
    new: str


# The syncs of the batch commit (Store.sync_placed, Store.sync_sealed) and of a lone file.
NO_DIRECTORY_FSYNC = Break(
    "store/__init__.py",
    "        try:\n            os.fsync(dir_fd)\n        except OSError:\n            for stored",
    "        try:\n            pass\n        except OSError:\n            for stored",
)
NO_SYNCFS = Break(
    "store/__init__.py",
    "min(partials, key=lambda partial: partial.serial).sync_filesystem()",
    "pass",
)
NO_FILE_FSYNC = Break("store/partial.py", "os.fsync(self._require_fd())", "pass")


class TracedReceiver(ReceiverProcess):
    """`scanxfer receive` under strace, its system calls written to `trace`.

    `package_dir`, if given, is a copy of the package to run instead of the tested one;
    `injected` are strace options that delay or fail calls (``-e inject=...``).
    """

    def __init__(
        self, root: Path, package_dir: Path | None = None, injected: tuple[str, ...] = ()
    ) -> None:
        root.mkdir(parents=True)
        config = root / "receiver.yaml"
        config.write_text("tls: false\n")  # plain frames, so that the ACKs show in the trace
        super().__init__(root, config=config)
        self.trace = root / "receiver.trace"
        self.package_dir = package_dir
        self.injected = injected  # more strace options: faults or delays to inject

    def start(self) -> TracedReceiver:
        environment = ["-E", f"PYTHONPATH={self.package_dir}"] if self.package_dir else []
        argv = [
            "strace",
            *STRACE_OPTIONS,
            *self.injected,
            *environment,
            "-o",
            str(self.trace),
            sys.executable,
            "-m",
            "scanxfer",
            "receive",
            *("-c", str(self.config), "--listen", "127.0.0.1:0"),
            *("--dir", str(self.incoming), "--state-dir", str(self.state)),
        ]
        # Started in `root`, so that `-m scanxfer` does not find the package in the cwd first.
        self.child = Proc("receiver", argv, cwd=self.root)
        self.port = int(self.child.wait_for(r"listening on \S+:(\d+)", 60).group(1))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the receiver itself; strace ends with it, its trace complete."""
        assert self.child is not None
        if self.child.returncode is None:
            children = Path(f"/proc/{self.child.pid}/task/{self.child.pid}/children")
            with contextlib.suppress(OSError):  # strace gone already: so is the receiver
                for pid in children.read_text().split():
                    os.kill(int(pid), sig)
        return self.child.wait(60)

    def report(self) -> Report:
        status = self.stop()
        assert status == 0, f"the receiver under strace ended with {status}:\n{self.log}"
        return check_trace(self.trace, self.incoming)


@pytest.fixture
def strace() -> None:
    """This check needs strace: failing without it, as a skip would hide that nothing was proved."""
    if shutil.which("strace") is None:
        pytest.fail(
            "strace is not installed: run tests/system/prerequisites.sh (apt install strace)"
        )


@pytest.fixture
def traced(tmp_path: Path, strace: None) -> Iterator[TracedReceiver]:
    receiver = TracedReceiver(tmp_path / "pi").start()
    yield receiver
    receiver.stop(signal.SIGKILL)  # if a test failed half-way; else it is stopped already


def deliver(folder: Path, receiver: ReceiverProcess, scans: Path) -> None:
    """`send --once` of `scans`, its configuration and journal in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = sender_config(folder / "sender.yaml", receiver.port, scans, tls="false")
    sender = send_once(config, timeout=300)
    assert sender.returncode == 0, sender.log


def write_small_scans(scans: Path) -> list[Path]:
    """16 KiB scans in three new directories, so that batches form and directories are made."""
    return [
        write_scan(scans / f"run{index % 3}" / f"s{index:03}.npy", (8192,), index)
        for index in range(SMALL_FILES)
    ]


def write_big_scans(scans: Path) -> list[Path]:
    """Past 8 MiB the digest is deferred; past 16 MiB the receiver starts writeback early."""
    return [write_big_scan(scans / f"big{index}.npy", 20) for index in range(2)]


def assert_every_ack_durable(report: Report, expected: int) -> None:
    assert len(report.acks) == expected, [str(ack.ack) for ack in report.acks]
    assert not report.violations, "\n".join(map(str, report.violations))


def test_every_ack_of_small_files_follows_their_group_commit(
    tmp_path: Path, traced: TracedReceiver
) -> None:
    scans = tmp_path / "scans"
    write_small_scans(scans)
    deliver(tmp_path, traced, scans)
    # A sender without that journal offers them all again: a DUPLICATE vouches for them too.
    deliver(tmp_path / "again", traced, scans)
    report = traced.report()
    assert_every_ack_durable(report, 2 * SMALL_FILES)
    outcomes = [sent.ack.outcome for sent in report.acks]
    assert outcomes.count(p.Outcome.DUPLICATE) == SMALL_FILES, outcomes
    syncfs_calls = len(re.findall(r"^\d+\s+syncfs\(", traced.trace.read_text(), re.MULTILINE))
    assert 0 < syncfs_calls < SMALL_FILES, "no batch formed: the group commit was not exercised"
    assert_identical(scans, traced.incoming)


def test_every_ack_of_big_files_follows_their_fsync(tmp_path: Path, traced: TracedReceiver) -> None:
    scans = tmp_path / "scans"
    write_big_scans(scans)
    deliver(tmp_path, traced, scans)
    assert_every_ack_durable(traced.report(), 2)
    assert_identical(scans, traced.incoming)


def test_the_ack_of_a_resumed_file_follows_its_fsync(
    tmp_path: Path, traced: TracedReceiver
) -> None:
    scans = tmp_path / "scans"
    write_big_scan(scans / "volume.npy", 24)
    with FaultProxy(traced.port, [Plan(stall_after=8 * MIB)]) as proxy:
        config = sender_config(tmp_path / "cut.yaml", proxy.port, scans, tls="false")
        sender = send_once_in_background(config)
        assert proxy.link(1).stalled.wait(120), sender.log
        assert stable_partial_size(traced) > 0
        sender.stop(signal.SIGKILL)
    deliver(tmp_path, traced, scans)  # with the journal of the cut run
    traced.child.wait_for(r"resuming volume\.npy at \d+", 10)
    assert_every_ack_durable(traced.report(), 1)
    assert_identical(scans, traced.incoming)


# How long strace holds the connection that makes a directory right after its mkdir: far
# longer than another connection needs to store a small file there.
HOLD_AFTER_MKDIR = ("-e", "inject=mkdirat:delay_exit=5000000")


def test_a_file_stored_in_a_directory_another_connection_is_making_waits_for_it(
    tmp_path: Path, strace: None
) -> None:
    """Connection A makes run0 and is held before it fsyncs incoming; meanwhile connection B
    stores run0/b.npy.  B's ACK must not leave before run0's own entry is durable."""
    receiver = TracedReceiver(tmp_path / "pi", injected=HOLD_AFTER_MKDIR).start()
    try:
        first, second = tmp_path / "a" / "scans", tmp_path / "b" / "scans"
        write_scan(first / "run0" / "a.npy", (8192,), 1)
        write_scan(second / "run0" / "b.npy", (8192,), 2)
        config = sender_config(tmp_path / "a" / "sender.yaml", receiver.port, first, tls="false")
        maker = send_once_in_background(config)
        wait_until((receiver.incoming / "run0").exists, "run0 on the receiver", receiver.child)
        deliver(tmp_path / "b", receiver, second)
        assert maker.wait(120) == 0, maker.log
        report = receiver.report()
    finally:
        receiver.stop(signal.SIGKILL)
    assert_staged(receiver.trace, report)
    assert_every_ack_durable(report, 2)


def assert_staged(trace: Path, report: Report) -> None:
    """The ACK of b.npy left while A was held between its mkdir and its next fsync: else the
    test proved nothing."""
    calls = list(parse_calls(trace.read_text()))
    mkdir = next(call for call in calls if call.name == "mkdirat")
    fsync = next(
        c for c in calls if c.pid == mkdir.pid and c.name == "fsync" and c.entry > mkdir.exit
    )
    ack = next(sent for sent in report.acks if sent.ack.stored_path == "run0/b.npy")
    assert mkdir.exit < ack.line < fsync.entry, "B was too slow: raise HOLD_AFTER_MKDIR"


@pytest.mark.parametrize(
    ("broken", "write_scans", "violation"),
    [
        (NO_DIRECTORY_FSYNC, write_small_scans, "missing directory fsync before ACK"),
        (NO_SYNCFS, write_small_scans, "missing data sync before ACK"),
        (NO_FILE_FSYNC, write_big_scans, "missing data sync before ACK"),
    ],
    ids=["without-directory-fsync", "without-syncfs", "without-file-fsync"],
)
def test_the_check_catches_a_receiver_that_skips_a_sync(
    tmp_path: Path,
    strace: None,
    broken: Break,
    write_scans: Callable[[Path], list[Path]],
    violation: str,
) -> None:
    package = broken_copy(tmp_path / "broken", broken)
    receiver = TracedReceiver(tmp_path / "pi", package_dir=package.parent).start()
    try:
        scans = tmp_path / "scans"
        files = write_scans(scans)
        deliver(tmp_path, receiver, scans)
        report = receiver.report()
    finally:
        receiver.stop(signal.SIGKILL)
    assert_ran_the_copy(receiver, package / broken.module)
    assert len(report.acks) == len(files)
    found = [str(v) for v in report.violations]
    assert found, "the check found nothing missing in a receiver that skips a sync"
    assert all(violation in text for text in found), "\n".join(found)  # that sync, no other


def broken_copy(root: Path, broken: Break) -> Path:
    """A copy of the package with `broken.old` replaced, found exactly once."""
    package = root / "scanxfer"
    shutil.copytree(Path(scanxfer.__file__).parent, package, ignore=shutil.ignore_patterns("*.pyc"))
    module = package / broken.module
    text = module.read_text()
    assert text.count(broken.old) == 1, f"the text to break is no longer in {module}: update it"
    module.write_text(text.replace(broken.old, broken.new))
    return package


def assert_ran_the_copy(receiver: TracedReceiver, module: Path) -> None:
    """The traced receiver imported the broken module, not the one under test."""
    as_traced = "".join(f"\\x{byte:02x}" for byte in bytes(module))  # how -xx prints it
    assert as_traced in receiver.trace.read_text(), f"the receiver did not load {module}"


# --- the model on hand-written traces: what counts as "before" -------------------------------

PART, DIR = "/in/.partial/k.part", "/in"


def xx(text: str | bytes) -> str:
    """`text` as strace -xx prints it."""
    raw = text.encode() if isinstance(text, str) else text
    return "".join(f"\\x{byte:02x}" for byte in raw)


def ack_sent_by(pid: int) -> str:
    frame = p.encode(p.Ack(7, p.Outcome.STORED, "a.npy"))
    socket = "5<TCP:[127.0.0.1:5000->127.0.0.1:4711]>"
    return f'{pid} sendto({socket}, "{xx(frame)}", {len(frame)}, 0, NULL, 0) = {len(frame)}'


def stored_until(*syncs: str) -> list[str]:
    """A partial written and linked to /in/a.npy; then `syncs` and the ACK, in that order."""
    return [
        f'1 openat(AT_FDCWD<{xx("/")}>, "{xx(PART)}", O_RDWR|O_CREAT|O_CLOEXEC, 0644)'
        f" = 3<{xx(PART)}>",
        f'1 write(3<{xx(PART)}>, "{xx("ab")}", 2) = 2',
        *syncs,
    ]


LINK = f'1 linkat(4<{xx("/in/.partial")}>, "{xx("k.part")}", 6<{xx(DIR)}>, "{xx("a.npy")}", 0) = 0'
FILE_FSYNC = f"1 fsync(3<{xx(PART)}>) = 0"
DIR_FSYNC = f"1 fsync(6<{xx(DIR)}>) = 0"


@pytest.mark.parametrize(
    ("lines", "missing"),
    [
        ([FILE_FSYNC, LINK, DIR_FSYNC, ack_sent_by(1)], []),
        ([f"2 syncfs(9<{xx(DIR)}>) = 0", LINK, DIR_FSYNC, ack_sent_by(1)], []),
        ([LINK, f"2 syncfs(9<{xx(DIR)}>) = 0", ack_sent_by(1)], []),
        ([LINK, DIR_FSYNC, ack_sent_by(1)], ["missing data sync"]),
        ([FILE_FSYNC, DIR_FSYNC, LINK, ack_sent_by(1)], ["missing directory fsync"]),
        (  # the fsync began before the last write ended: it need not cover it
            [
                f"2 fsync(3<{xx(PART)}> <unfinished ...>",
                f'1 write(3<{xx(PART)}>, "{xx("c")}", 1) = 1',
                "2 <... fsync resumed>)              = 0",
                LINK,
                DIR_FSYNC,
                ack_sent_by(1),
            ],
            ["missing data sync"],
        ),
        (  # the ACK began to leave while the directory fsync was still running
            [
                FILE_FSYNC,
                LINK,
                f"2 fsync(6<{xx(DIR)}> <unfinished ...>",
                ack_sent_by(1),
                "2 <... fsync resumed>) = 0",
            ],
            ["missing directory fsync"],
        ),
    ],
    ids=[
        "fsyncs",
        "syncfs-then-fsync",
        "syncfs-after-link",
        "no-data-sync",
        "fsync-before-link",
        "overlapping-write",
        "overlapping-ack",
    ],
)
def test_the_model_orders_calls_by_where_strace_saw_them(
    tmp_path: Path, lines: list[str], missing: list[str]
) -> None:
    trace = tmp_path / "trace"
    trace.write_text("\n".join(stored_until(*lines)) + "\n")
    report = check_trace(trace, Path(DIR))
    assert [ack.ack for ack in report.acks] == [p.Ack(7, p.Outcome.STORED, "a.npy")]
    found = [str(violation) for violation in report.violations]
    assert len(found) == len(missing), found
    for text, expected in zip(found, missing, strict=True):
        assert expected in text, text
