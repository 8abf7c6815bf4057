"""The sender's queue, retry policy and journal, carried by any number of transports.

A lost connection puts its files back at the front of the queue and the
receiver's partials let the next connection resume them.  Every state change is
written to the ledger first, so a crash at any moment costs at most a
duplicate offer, which the receiver ACKs without storing a second copy.

A file is checked again right before it is offered (`readiness.assess`: no
writer, complete header, still the version queued), after it is sent (by the
transport: changed meanwhile? then it is withdrawn) and before it is moved or
deleted (`handoff`).  A file that fails a check is handed back to the watcher
(`reconsider`), which offers it again once it is complete.

Which wire carries the files is `kind`'s business (see `transport`); how long to
wait is asked of `clock`, so the whole policy runs in tests on a virtual clock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import protocol as p
from ..config import SenderConfig
from ..sizes import human_size, rate
from ..watcher import Condition, Readiness, Version, assess
from .handoff import after_delivery, finish_interrupted_hand_offs
from .job import FileChanged, FileJob, NotReady
from .ledger import Ledger, Outcome, Verdict
from .retry import Backoff, Clock, SystemClock
from .run_state import Link, LinkState, Progress, Tally
from .transport import (
    Answer,
    AuthenticationFailed,
    ConnectionLost,
    Pulse,
    Stopped,
    Transport,
    TransportKind,
    Withdrawn,
)

log = logging.getLogger("scanxfer.sender")

# --once gives up when this many connection attempts in a row fail.
ONCE_CONNECT_ATTEMPTS = 6
# --once stops retrying a file after this many retryable refusals (a later run tries again).
ONCE_FILE_ATTEMPTS = 5
# A daemon closes an idle connection after this long; the next file reconnects.
IDLE_DISCONNECT_SECONDS = 15.0


@dataclass
class Delivery:
    """The queue of files, the retry policy, the journal, and the transports that carry them."""

    config: SenderConfig
    ledger: Ledger
    once: bool
    # Which kind of transport carries the files (see transport.py); one is opened at a time.
    kind: TransportKind
    stop: threading.Event = field(default_factory=threading.Event)
    # Called while one big file is hashed or sent: the watchdog's sign of life.
    alive: Callable[[], None] = field(default_factory=lambda: _idle)
    # Hands a file back to the watcher, which judges it again once it settles (the daemon);
    # None with --once, where nothing looks at a file twice.
    reconsider: Callable[[str], None] | None = None
    pending: deque[FileJob] = field(default_factory=deque)
    delayed: list[tuple[float, int, FileJob]] = field(default_factory=list)
    # The jobs in `pending` and `delayed`, by path: a path is queued once, at its newest version.
    queued: dict[str, FileJob] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # --once: not complete in time
    progress: Progress = field(default_factory=Progress)
    unreachable: str = ""
    transport: Transport | None = None  # the one open now, if any
    link: Link = field(default_factory=Link)
    # Totals for the metrics; the daemon hands each new Delivery (after a reload) the same one.
    tally: Tally = field(default_factory=Tally)
    # Offered and not answered yet, oldest first: the first is the file being sent.
    offered: dict[str, FileJob] = field(default_factory=dict)
    paused_until: float = 0.0
    clock: Clock = field(default_factory=SystemClock)
    last_activity: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_activity = self.clock.now()
        self.connect_backoff = Backoff(self.config.retry_initial, self.config.retry_max)
        self.space_backoff = Backoff(self.config.retry_initial, self.config.retry_max)
        self._tiebreak = itertools.count()
        # Between the slices of a file: the watchdog, the stop, the progress, the limit.
        self.pulse = Pulse(self.alive, self.stop, self.progress, self.config.max_rate)
        # Before the watch folder is looked at: a scan a killed sender left half-deleted.
        finish_interrupted_hand_offs(self.config, self.ledger.delivered_version)

    def add(self, relpath: str) -> None:
        """Consider a complete file: queue it unless the journal says it is done."""
        path = self.config.watch_dir / relpath
        try:
            version = Version.of(path.lstat())
        except OSError:
            self.ledger.forget(relpath)
            return
        if (queued := self.queued.get(relpath)) is not None:
            queued.version = version  # its turn comes with its newest version
            return
        known_digest = self.ledger.delivered_digest(relpath, version.size)
        verdict = self.ledger.observe(relpath, version)
        if verdict is Verdict.ALREADY_DELIVERED:
            self.progress.files_already_delivered += 1
            self._hand_off(relpath, version)
            return
        if verdict is Verdict.FAILED_BEFORE:
            if self.once:
                self.failed.append((relpath, "refused before and unchanged since"))
            return
        if verdict is Verdict.NEW_VERSION:
            log.info("%s changed after delivery; sending the new version", relpath)
        elif verdict is Verdict.RETRY_CHANGED:
            log.info("%s changed since it was refused; trying again", relpath)
        known = known_digest if verdict is Verdict.NEW_VERSION else None
        self._enqueue(FileJob(relpath, path, version, known_digest=known))
        self.progress.files_total += 1
        self.progress.bytes_total += version.size

    def unreadable(self, relpath: str, readiness: Readiness) -> None:
        """A file this user may not read: failed, with its reason, until it changes (a chmod
        changes its ctime, and the watcher hands the new version out again)."""
        reason = readiness.reason
        if self.once:
            log.error("cannot send %s: %s", relpath, reason)
            self.failed.append((relpath, reason))
        if readiness.version is None or relpath in self.queued:
            return
        verdict = self.ledger.observe(relpath, readiness.version)
        if verdict in (Verdict.ALREADY_DELIVERED, Verdict.FAILED_BEFORE):
            return
        if not self.once:
            log.warning("cannot send %s: %s; it is sent once it may be read", relpath, reason)
        self.ledger.refused(relpath, reason, final=True)
        self.tally.failed += 1

    def _enqueue(self, job: FileJob, *, front: bool = False) -> None:
        if job.relpath in self.queued:
            return  # a newer version of it arrived meanwhile and is queued already
        if front:
            self.pending.appendleft(job)
        else:
            self.pending.append(job)
        self.queued[job.relpath] = job

    def _requeue(self, jobs: list[FileJob]) -> None:
        """Files back from a lost connection go first, unless a newer version is queued."""
        for job in reversed(jobs):
            job.release()
            self._enqueue(job, front=True)

    @property
    def finished(self) -> bool:
        """Nothing left to do, or told to stop, or (--once) the receiver is out of reach."""
        return (
            self.stop.is_set()
            or bool(self.unreachable)
            or (not self.pending and not self.delayed and not self.busy)
        )

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    @property
    def in_flight(self) -> int:
        """Files offered and not yet answered."""
        return self.transport.in_flight if self.transport is not None else 0

    def step(self) -> None:
        """Make some progress: connect if needed, fill the window, exchange once.

        Returns at once when there is nothing to send, so a daemon can wait on
        its watcher instead.
        """
        now = self.clock.now()
        while self.delayed and self.delayed[0][0] <= now:
            self.pending.append(heapq.heappop(self.delayed)[2])
        if not self.pending and not self.busy:
            self._maybe_disconnect(now)
            self.clock.wait(self.stop, min(0.2, self.delayed[0][0] - now) if self.delayed else 0)
            return
        if now < self.paused_until:
            self.clock.wait(self.stop, min(0.2, self.paused_until - now))
            return
        if self.link.state is LinkState.PAUSED:  # the pause is over: offering again
            self.link.become(LinkState.CONNECTED)
        if self.transport is None and not self._connect():
            return
        try:
            self._exchange()
        except (ConnectionLost, FileChanged) as error:
            self._lost(error)

    def _exchange(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.pending and transport.free_slots > 0:
            job = self.pending.popleft()
            del self.queued[job.relpath]
            if self._prepare(job):
                job.offered_at = time.monotonic()
                log.debug("offering %s (%s)", job.relpath, human_size(job.size))
                transport.offer(job)
                self.offered[job.relpath] = job
        for job, answer in transport.step(wait=0.2):
            self._answered(job, answer)

    def _prepare(self, job: FileJob) -> bool:
        """Check the file once more right before it is offered; open and hash it."""
        readiness = assess(job.path)
        if not readiness.ready:
            unreadable = readiness.condition is Condition.UNREADABLE
            return self._not_ready(job, readiness.reason, unreadable=unreadable)
        assert readiness.version is not None  # a ready file has one
        if readiness.version != job.version:
            if self.reconsider is not None:
                return self._not_ready(job, "changed since it was found complete")
            job.version = readiness.version  # --once: deliver what is complete now
        try:
            job.prepare(self.pulse)
        except Stopped:
            self._enqueue(job, front=True)  # still to send: a stop is no verdict on the file
            raise
        except NotReady as error:
            return self._not_ready(job, str(error))
        except OSError as error:
            return self._not_ready(job, f"cannot be read: {error.strerror or error}", True)
        self.ledger.sending(job.relpath, job.version, job.digest)
        return True

    def _not_ready(self, job: FileJob, reason: str, unreadable: bool = False) -> bool:
        """Take a file out of this run's queue: it is not the complete file it was."""
        if unreadable:
            log.warning("cannot send %s: %s", job.relpath, reason)
            self.ledger.refused(job.relpath, reason, final=True)  # until it changes
            if self.once:
                self.failed.append((job.relpath, reason))
        elif self.reconsider is not None:
            log.info("not sending %s yet: %s; it is sent once it is complete", job.relpath, reason)
        else:
            log.warning("skipping %s: %s; run again once it is complete", job.relpath, reason)
        self._drop(job, reason, counted=not unreadable)
        return False

    def _drop(self, job: FileJob, reason: str, counted: bool = True) -> None:
        self.progress.dropped(job.relpath, job.size)
        if counted and self.once:
            self.skipped.append((job.relpath, reason))
        self._give_back(job.relpath)

    def _give_back(self, relpath: str) -> None:
        if self.reconsider is not None:
            self.reconsider(relpath)

    def reach(self) -> bool:
        """Open the way to the receiver, retrying as for a file; whether it answered.

        `send --once` with nothing to send calls this before it says so: "nothing to send"
        is only true of a receiver that was reached (pairing with another receiver makes
        every file owed again).  A kind whose `open` does not connect (the prototype, which
        would take a connection as a file) is taken at its word.
        """
        while self.transport is None and not self.stop.is_set() and not self.unreachable:
            self._connect()
        return self.transport is not None

    def _connect(self) -> bool:
        try:
            self.transport = self.kind.open(self.config, self.pulse)
        except Stopped:
            return False  # asked to stop while connecting: no failure, no retry
        except AuthenticationFailed as error:
            self._not_recognised(str(error))
            return False
        except ConnectionLost as error:
            self._connection_failed(str(error))
            return False
        self.last_activity = self.clock.now()
        self.link.succeeded()
        return True

    def _not_recognised(self, reason: str) -> None:
        """Keys or certificate do not match: only a person can fix it, so retry slowly."""
        if self.once:
            self.unreachable = reason
            return
        log.error("%s; trying again in %.0f s", reason, self.config.retry_max)
        self.link.become(LinkState.RETRYING, reason, self.config.retry_max)
        self._pause(self.config.retry_max)

    def _pause(self, seconds: float) -> None:
        """Wait before trying again, still showing signs of life, until a stop is asked."""
        deadline = self.clock.now() + seconds
        while (left := deadline - self.clock.now()) > 0 and not self.clock.wait(
            self.stop, min(left, 1.0)
        ):
            self.alive()

    def _connection_failed(self, reason: str) -> None:
        delay = self.connect_backoff.next_delay()
        self.link.become(LinkState.RETRYING, reason, delay)
        if self.once and self.connect_backoff.failures >= ONCE_CONNECT_ATTEMPTS:
            self.unreachable = reason
            return
        log.warning("%s; retrying in %.1f s", reason, delay)
        self._pause(delay)

    def _lost(self, error: Exception) -> None:
        assert self.transport is not None
        jobs = self.transport.requeue()
        self.transport = None
        self.offered.clear()
        self._requeue(jobs)
        self.tally.retries += len(jobs)
        if isinstance(error, Stopped):
            log.info("stopped mid-file; the receiver keeps what it has, and the next run resumes")
            return
        if isinstance(error, FileChanged):
            log.warning("%s; it will be offered again", error)
            self.link.become(LinkState.IDLE)
            return
        self._connection_failed(str(error))

    def _answered(self, job: FileJob, answer: Answer) -> None:
        elapsed = time.monotonic() - job.offered_at
        log.debug("%s: %s %.3f s after its offer", job.relpath, _describe(answer), elapsed)
        self.last_activity = self.clock.now()
        job.release()
        self.offered.pop(job.relpath, None)
        if isinstance(answer, p.Ack):
            self._acked(job, answer)
        elif isinstance(answer, Withdrawn):
            self._withdrawn(job, answer)
        else:
            self._refused(job, answer)

    def _withdrawn(self, job: FileJob, withdrawn: Withdrawn) -> None:
        self.ledger.refused(job.relpath, f"withdrawn: {withdrawn.reason}", final=False)
        later = "it is sent again once complete" if self.reconsider else "run again to send it"
        log.warning(
            "%s %s: withdrawn, the receiver keeps nothing of it; %s",
            job.relpath,
            withdrawn.reason,
            later,
        )
        self._drop(job, withdrawn.reason)

    def _acked(self, job: FileJob, ack: p.Ack) -> None:
        # Journal first: a crash before the hand-off redoes the hand-off, never the send.
        known = job.sent_digest or (None if job.digest == p.DEFERRED_DIGEST else job.digest)
        outcome = _JOURNAL_OUTCOMES.get(ack.outcome, Outcome.STORED)
        self.ledger.delivered(job.relpath, ack.stored_path, job.version, known, outcome)
        self.progress.delivered(job.relpath, job.size)
        self.tally.acked(job.size, job.version.mtime_ns)
        self.connect_backoff.reset()
        self.space_backoff.reset()
        self.link.succeeded()
        if ack.outcome is p.Outcome.DUPLICATE:
            log.info("%s is already on the receiver as %s", job.relpath, ack.stored_path)
        else:
            beside = (
                f" as {ack.stored_path} ({self._why_beside(job.relpath)})"
                if ack.outcome is p.Outcome.KEPT_BESIDE
                else ""
            )
            # The transport stamps `started` on the system's clock, whatever `self.clock` is.
            speed = rate(job.size, time.monotonic() - job.started)
            log.info("sent %s (%s, %s)%s", job.relpath, human_size(job.size), speed, beside)
        self._hand_off(job.relpath, job.version)

    def _why_beside(self, relpath: str) -> str:
        """The receiver stores by relative path: name the other watch folder, if it was ours."""
        others = self.ledger.delivered_elsewhere(relpath)
        if not others:
            return "beside a different file"
        return f"beside the different file of that name delivered from {others[0]}"

    def _hand_off(self, relpath: str, version: Version) -> None:
        """after_send, now; or, if a writer holds the file or it changed, once it settles."""
        if not after_delivery(self.config, relpath, version):
            self._give_back(relpath)

    def _refused(self, job: FileJob, nack: p.Nack) -> None:
        job.attempts += 1
        reason = f"{nack.reason.name.lower()}: {nack.message}"
        gave_up = self.once and job.attempts >= ONCE_FILE_ATTEMPTS
        self.ledger.refused(job.relpath, reason, final=not nack.retryable)
        if not nack.retryable or gave_up:
            self.tally.failed += 1
            log.error("cannot deliver %s: %s (not retried)", job.relpath, reason)
            self.failed.append((job.relpath, reason))
            self.progress.under_way.pop(job.relpath, None)  # no longer on its way
            return
        self.tally.retries += 1
        if nack.reason is p.NackReason.DIGEST_MISMATCH:
            log.warning(
                "%s: digest mismatch on the receiver (changed while sending, or corrupted "
                "in flight); sending it again from the start",
                job.relpath,
            )
            self._enqueue(job, front=True)
        elif nack.reason is p.NackReason.NO_SPACE:
            delay = self.space_backoff.next_delay()
            log.warning("receiver has no space for %s; pausing %.1f s", job.relpath, delay)
            self.paused_until = self.clock.now() + delay
            self.link.become(LinkState.PAUSED, reason, delay)
            self._enqueue(job, front=True)
        else:
            self._retry_later(job, reason)

    def _retry_later(self, job: FileJob, reason: str) -> None:
        backoff = Backoff(self.config.retry_initial, self.config.retry_max, job.attempts - 1)
        seconds = backoff.next_delay()
        log.warning(
            "receiver refused %s for now (%s); retrying in %.1f s", job.relpath, reason, seconds
        )
        if job.relpath not in self.queued:
            due = self.clock.now() + seconds
            heapq.heappush(self.delayed, (due, next(self._tiebreak), job))
            self.queued[job.relpath] = job

    def _maybe_disconnect(self, now: float) -> None:
        if self.transport and now - self.last_activity > IDLE_DISCONNECT_SECONDS:
            self.transport.close()
            self.transport = None
            self.link.become(LinkState.IDLE)

    def close(self) -> None:
        if self.transport is not None:
            for job in self.transport.requeue():
                job.release()
            self.transport = None
        self.offered.clear()
        self.link.become(LinkState.IDLE)


# What the journal records of each ACK; an outcome added to the protocol later counts as stored.
_JOURNAL_OUTCOMES = {
    p.Outcome.STORED: Outcome.STORED,
    p.Outcome.DUPLICATE: Outcome.DUPLICATE,
    p.Outcome.KEPT_BESIDE: Outcome.KEPT_BESIDE,
}


def _idle() -> None:
    """No watchdog to tell (send --once, tests)."""


def _describe(answer: Answer) -> str:
    """An answer as -v shows it: ACK STORED, NACK NO_SPACE, withdrawn."""
    if isinstance(answer, p.Ack):
        return f"ACK {answer.outcome.name}"
    if isinstance(answer, p.Nack):
        return f"NACK {answer.reason.name}"
    return "withdrawn"
