"""The writers' zoo: every way an instrument writes a scan, against a real `scanxfer send`.

Each writer is a process of its own (tests/integration/writers.py), as the instrument software
is: the sender must hold back a scan while *another* process writes it, maps it writable, or is
about to write more.  Each case runs with after_send keep, move and delete, because moving or
deleting a scan before its writer is done loses data for good.

For every case the receiver must end with exactly the writer's final bytes under the scan's own
name, no `name~N.npy` copy of an incomplete version, and no partial left behind; the source must
be where after_send says, and no writer may find its file gone from under it.  A later, complete
"marker" scan is the positive signal that the sender has had every chance to do something wrong.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import pytest

from ..procs import Proc
from .faultproxy import FaultProxy, Plan
from .harness import (
    GIVE_UP_SECONDS,
    ReceiverProcess,
    sender_config,
    sender_status,
    start_sender,
    unused_port,
    wait_until,
    write_scan,
)
from .writers import DTYPE, header_bytes

ROOT = Path(__file__).resolve().parents[2]
AFTER_SEND = pytest.mark.parametrize("after_send", ["keep", "move", "delete"])
# The harness's sender settles files after 0.2 s; a writer pausing five times that long would
# have its half-written scan taken for a finished one by a sender that trusts quiet alone.
PAUSE = 1.0
ROWS = 512  # of 2048 uint16: 2 MiB, small enough to keep the file quick
SCAN = "scan.npy"
MARKER = "marker.npy"
# Big enough that its send over SLOW_LINK lasts seconds, well beyond what the socket buffers
# between sender and receiver hold (a few MiB): an act "during the send" really lands in it.
BIG_ROWS = 12288  # 48 MiB
BIG_BYTES = len(header_bytes(BIG_ROWS, 2048)) + BIG_ROWS * 2048 * DTYPE.itemsize
SLOW_LINK = Plan(rate=12e6)
UNDER_WAY = 8 << 20  # upstream bytes that show a big send is under way
# Longer than a sender reading on from the cut needs to reach the new end of the file (at most
# 16 MiB over SLOW_LINK) and send what it finds there: the half-rewritten scan.
REWRITE_PAUSE = 3.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class WriterProcess:
    """`python -m tests.integration.writers KIND PATH ...`, its progress lines collected."""

    def __init__(
        self,
        kind: str,
        path: Path,
        *,
        seed: int,
        rows: int = ROWS,
        pieces: int = 0,
        pause: float = PAUSE,
        hold: tuple[str, ...] = (),
        temp: str = "",
    ) -> None:
        self.kind, self.path = kind, path
        argv = [sys.executable, "-m", "tests.integration.writers", kind, str(path)]
        argv += ["--seed", str(seed), "--rows", str(rows), "--pause", str(pause)]
        argv += ["--pieces", str(pieces)] if pieces else []
        argv += ["--temp", temp] if temp else []
        for point in hold:
            argv += ["--hold", point]
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def log(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def wait_for(self, word: str) -> str:
        """The first line starting with `word`; fails if the writer ends without printing it."""
        deadline = time.monotonic() + GIVE_UP_SECONDS
        with self.changed:
            while True:
                for line in self.lines:
                    if line.startswith(word):
                        return line
                if self.process.poll() is not None and not self._reader.is_alive():
                    break
                if time.monotonic() > deadline:
                    break
                self.changed.wait(0.1)
        raise AssertionError(f"{self.kind} writer of {self.path} never said {word!r}:\n{self.log}")

    def go(self) -> None:
        """Release a writer held by --hold (start or half)."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> str:
        """Wait for the writer to end; the SHA-256 of the file it finished."""
        self.process.wait(GIVE_UP_SECONDS)
        self._reader.join(10)
        lost = [line for line in self.lines if line.startswith("lost ")]
        assert not lost, (
            f"the {self.kind} writer lost its file: the sender moved or deleted it before its "
            f"writer was done with it ({lost[0][5:]})"
        )
        assert self.process.returncode == 0, f"{self.kind} writer failed:\n{self.log}"
        return self.wait_for("done ").split()[1]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self._reader.join(10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class Zoo:
    """One test's scan directory, sent_dir, watching sender and writers; the checks.

    Used as a context manager: leaving it kills any writer still running and stops the sender,
    which must still be running then and must exit cleanly.
    """

    def __init__(
        self, tmp_path: Path, receiver: ReceiverProcess, after_send: str, port: int = 0
    ) -> None:
        self.receiver, self.after_send = receiver, after_send
        self.scans = tmp_path / "scans"
        self.scans.mkdir()
        self.sent = tmp_path / "sent"
        self.config = sender_config(
            tmp_path / "sender.yaml",
            port or receiver.port,
            self.scans,
            after_send=after_send,
            sent_dir=str(self.sent),
        )
        self.writers: list[WriterProcess] = []
        self.sender: Proc | None = None

    def __enter__(self) -> Zoo:
        self.sender = start_sender(self.config)
        try:
            self.sender.wait_for("watching", 60)
        except BaseException:
            self.sender.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.sender is not None
        alive = self.sender.process.poll() is None
        try:
            for writer in self.writers:
                writer.kill()
        finally:
            try:
                code = self.sender.stop()
            except subprocess.TimeoutExpired:
                code = self.sender.stop(signal.SIGKILL)
        if exc_type is None:
            assert alive, f"the sender died:\n{self.sender.log}"
            assert code == 0, f"the sender exited with {code}:\n{self.sender.log}"

    def writer(
        self,
        kind: str,
        seed: int,
        *,
        rows: int = ROWS,
        pieces: int = 0,
        pause: float = PAUSE,
        hold: tuple[str, ...] = (),
        temp: str = "",
    ) -> WriterProcess:
        """A writer of SCAN in the watched directory; stopped when the Zoo is left."""
        writer = WriterProcess(
            kind,
            self.scans / SCAN,
            seed=seed,
            rows=rows,
            pieces=pieces,
            pause=pause,
            hold=hold,
            temp=temp,
        )
        self.writers.append(writer)
        return writer

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        wait_until(condition, what, self.receiver.child, self.sender)

    def stored(self) -> list[str]:
        return self.receiver.stored_files()

    def wait_stored(self, name: str, sha: str) -> None:
        """Until `name` is on the receiver; it must hold the final content from the first."""
        self.wait(lambda: name in self.stored(), f"{name} on the receiver")
        assert sha256(self.receiver.incoming / name) == sha, (
            f"{name} was stored with content other than the writer's final bytes: an "
            f"incomplete version was sent (stored: {self.stored()})"
        )

    def deliver_marker(self) -> None:
        """A complete scan written after everything else, and its arrival: by then the sender
        has looked at every earlier change (and, had it wanted to, sent it)."""
        write_scan(self.scans / MARKER, (64,), seed=99)
        self.wait(lambda: MARKER in self.stored(), "the marker scan on the receiver")

    def check_delivered(self, name: str, sha: str, stored: dict[str, str] | None = None) -> None:
        """After `name` (final content `sha`) was stored: the hand-off, nothing else stored,
        no partial left.  `stored`: every file the receiver must hold for this scan."""
        stored = stored or {name: sha}
        if self.after_send != "keep":
            self.wait(lambda: not (self.scans / name).exists(), f"the {self.after_send} of {name}")
        self.deliver_marker()
        assert self.stored() == sorted([*stored, MARKER]), (
            f"the receiver must hold exactly {sorted(stored)} of this scan (and the marker)"
        )
        for path, digest in stored.items():
            assert sha256(self.receiver.incoming / path) == digest, path
        self.wait(lambda: self.receiver.partials() == [], "no partial left on the receiver")
        self.check_handed_off(name, sha)

    def check_handed_off(self, name: str, sha: str) -> None:
        source, moved = self.scans / name, self.sent / name
        if self.after_send == "keep":
            assert sha256(source) == sha, "keep: the source must hold the final content"
        elif self.after_send == "move":
            assert not source.exists(), "move: the source must have left the watched directory"
            assert sha256(moved) == sha, "move: sent_dir must hold the final content"
        else:
            assert not source.exists(), "delete: the source must be gone"
            assert not moved.exists(), "delete: nothing may land in sent_dir"

    def check_not_stored(self, name: str) -> None:
        """Nothing of `name` on the receiver, now that a later scan went through; no partial."""
        self.deliver_marker()
        assert self.stored() == [MARKER], f"{name} (or a copy) was stored"
        self.wait(lambda: self.receiver.partials() == [], "no partial left on the receiver")
        assert not (self.sent / name).exists(), f"{name} was moved to sent_dir"


@pytest.fixture
def late_receiver(tmp_path: Path) -> Iterator[ReceiverProcess]:
    """A receiver on a port of its own that the test starts later (down until then)."""
    receiver = ReceiverProcess(tmp_path / "pi", port=unused_port())
    yield receiver
    if receiver.child is not None and receiver.child.process.poll() is None:
        receiver.stop()


# -- 1 to 4 and 7: the shapes of a writer at work on a scan under its final name

# (kind of writer, seed of its content, pieces it writes)
WRITERS_AT_WORK = [
    # Open all along, growing in pieces: the size stays short of what the header promises.
    pytest.param("pieces", 1, 3, id="pieces-through-one-fd"),
    # ftruncate to the full size first: the size matches the header long before the data.
    pytest.param("prealloc", 2, 2, id="preallocated-then-filled"),
    # Full size at once, data through a writable mapping: no write(), no inotify event.
    pytest.param("memmap", 3, 3, id="open-memmap-filled-slowly"),
    # Closed between frames, so nobody holds it open: only the header says it is unfinished.
    pytest.param("append", 4, 3, id="appended-and-closed-per-frame"),
]


@pytest.mark.parametrize(("kind", "seed", "pieces"), WRITERS_AT_WORK)
@AFTER_SEND
def test_a_writer_at_work(
    kind: str, seed: int, pieces: int, after_send: str, tmp_path: Path, receiver: ReceiverProcess
) -> None:
    with Zoo(tmp_path, receiver, after_send) as zoo:
        sha = zoo.writer(kind, seed=seed, pieces=pieces).finish()
        zoo.wait_stored(SCAN, sha)
        zoo.check_delivered(SCAN, sha)


@pytest.mark.parametrize("temporary", ["scan.npy.tmp", ".scan.npy"])
@AFTER_SEND
def test_written_to_a_temporary_name_then_renamed(
    after_send: str, temporary: str, tmp_path: Path, receiver: ReceiverProcess
) -> None:
    """Both temporary names match the default ignore list ("*.tmp", ".*"); the hidden one
    matches "*.npy" too, so only that list keeps it back.  Only the renamed scan may go."""
    with Zoo(tmp_path, receiver, after_send) as zoo:
        sha = zoo.writer("tmp-rename", seed=7, pieces=3, temp=temporary).finish()
        zoo.wait_stored(SCAN, sha)
        zoo.check_delivered(SCAN, sha)


# -- 5, 6 and 11: a scan rewritten under the same name


@AFTER_SEND
def test_rewritten_while_queued(
    after_send: str, tmp_path: Path, late_receiver: ReceiverProcess
) -> None:
    """Receiver down; version A is complete and queued.  The instrument re-acquires under the
    same name and, while its rewrite is half done, the receiver comes back."""
    with Zoo(tmp_path, late_receiver, after_send) as zoo:
        zoo.writer("pieces", seed=50, pieces=1).finish()
        zoo.wait(
            lambda: sender_status(zoo.config)["backlog"]["files"] == 1, "version A to be queued"
        )
        rewrite = zoo.writer("rewrite", seed=51, pieces=2, hold=("half",))
        rewrite.wait_for("halfway")
        late_receiver.start()
        time.sleep(PAUSE)  # the writer's pause, with the receiver up: the point of the case
        rewrite.go()
        sha = rewrite.finish()
        zoo.wait_stored(SCAN, sha)
        zoo.check_delivered(SCAN, sha)


@pytest.mark.slow
@AFTER_SEND
def test_rewritten_while_being_sent(
    after_send: str, tmp_path: Path, receiver: ReceiverProcess
) -> None:
    """A big scan is truncated and written anew (pausing halfway) while its send is under way:
    what was sent is withdrawn, and only the new content is stored."""
    with (
        FaultProxy(receiver.port, [SLOW_LINK]) as proxy,
        Zoo(tmp_path, receiver, after_send, port=proxy.port) as zoo,
    ):
        zoo.writer("pieces", seed=60, rows=BIG_ROWS, pieces=1).finish()
        rewrite = zoo.writer(
            "rewrite", seed=61, rows=BIG_ROWS, pieces=2, pause=REWRITE_PAUSE, hold=("start",)
        )
        rewrite.wait_for("ready")
        zoo.wait(lambda: proxy.upstream_bytes > UNDER_WAY, "the send to be under way")
        assert proxy.upstream_bytes < BIG_BYTES // 2, "premise: the rewrite starts mid-send"
        rewrite.go()
        sha = rewrite.finish()
        zoo.wait_stored(SCAN, sha)
        zoo.check_delivered(SCAN, sha)


@AFTER_SEND
def test_changed_in_place_with_the_mtime_put_back(
    after_send: str, tmp_path: Path, receiver: ReceiverProcess
) -> None:
    """Same size, same mtime, new content (as `cp -p` or `rsync -t` leave a file): a new
    version all the same, stored beside the first as scan~1.npy since a receiver never
    overwrites.  With move or delete the first version's ACK is held until the change is made:
    the source then differs from what was delivered and may only go once the change is stored.
    """
    # Keep: any time after the delivery.  Move and delete leave nothing to change after it, so
    # the change lands between the receiver storing version 1 and the sender hearing so.
    plans = [] if after_send == "keep" else [Plan(rate=1e6)]  # 2 MiB take 2 s: time to hold
    with (
        FaultProxy(receiver.port, plans) as proxy,
        Zoo(tmp_path, receiver, after_send, port=proxy.port) as zoo,
    ):
        first = zoo.writer("pieces", seed=110, pieces=1).finish()
        if after_send == "keep":
            zoo.wait_stored(SCAN, first)
            zoo.wait(lambda: sender_status(zoo.config)["delivered"] == 1, "the sender to hear")
        else:
            zoo.wait(lambda: proxy.upstream_bytes > 512 << 10, "the send to be under way")
            proxy.link(1).hold_downstream()
            zoo.wait_stored(SCAN, first)
        second = zoo.writer("inplace", seed=111, pieces=1).finish()
        proxy.release()
        beside = SCAN.replace(".npy", "~1.npy")
        if after_send == "keep":
            zoo.wait(lambda: beside in zoo.stored(), "the changed content on the receiver")
        zoo.check_delivered(SCAN, second, stored={SCAN: first, beside: second})


# -- 8 to 10: writers and files that fail


@AFTER_SEND
def test_writer_killed_halfway(after_send: str, tmp_path: Path, receiver: ReceiverProcess) -> None:
    """Header and half the rows, then SIGKILL: never stored, never moved or deleted."""
    with Zoo(tmp_path, receiver, after_send) as zoo:
        writer = zoo.writer("pieces", seed=8, pieces=2, hold=("half",))
        writer.wait_for("halfway")
        writer.process.send_signal(signal.SIGKILL)
        writer.kill()
        source = zoo.scans / SCAN
        left = sha256(source)
        zoo.check_not_stored(SCAN)
        assert source.exists(), "the crashed writer's file was moved or deleted"
        assert sha256(source) == left, "the crashed writer's file was changed"


@pytest.mark.slow
@AFTER_SEND
def test_deleted_while_being_sent(
    after_send: str, tmp_path: Path, receiver: ReceiverProcess
) -> None:
    """The send already open reads on from the unlinked file: what it sent must be withdrawn."""
    with (
        FaultProxy(receiver.port, [SLOW_LINK]) as proxy,
        Zoo(tmp_path, receiver, after_send, port=proxy.port) as zoo,
    ):
        zoo.writer("pieces", seed=9, rows=BIG_ROWS, pieces=1).finish()
        zoo.wait(lambda: proxy.upstream_bytes > UNDER_WAY, "the send to be under way")
        assert proxy.upstream_bytes < BIG_BYTES // 2, "premise: the delete lands mid-send"
        (zoo.scans / SCAN).unlink()
        zoo.check_not_stored(SCAN)


@pytest.mark.slow
@AFTER_SEND
def test_truncated_while_being_sent(
    after_send: str, tmp_path: Path, receiver: ReceiverProcess
) -> None:
    """Cut to half and left so: an incomplete scan, never stored, never handed off."""
    with (
        FaultProxy(receiver.port, [SLOW_LINK]) as proxy,
        Zoo(tmp_path, receiver, after_send, port=proxy.port) as zoo,
    ):
        zoo.writer("pieces", seed=10, rows=BIG_ROWS, pieces=1).finish()
        source = zoo.scans / SCAN
        zoo.wait(lambda: proxy.upstream_bytes > UNDER_WAY, "the send to be under way")
        assert proxy.upstream_bytes < BIG_BYTES // 2, "premise: the truncation lands mid-send"
        os.truncate(source, BIG_BYTES // 2)
        left = sha256(source)
        zoo.check_not_stored(SCAN)
        assert source.exists(), "the truncated scan was moved or deleted"
        assert sha256(source) == left, "the truncated scan was changed"
