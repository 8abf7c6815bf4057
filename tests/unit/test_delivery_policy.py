"""The sender's retry policy, run in-process against a scripted transport on a virtual clock.

`Delivery` is given a fake `Transport` (the seam in sender/transport.py) and a `Clock` that
only advances when the policy waits, over real .npy files and a real journal.  So each test
can tell how long the policy chose to wait, and that every file is recorded exactly once,
without a socket or a second of real waiting.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from scanxfer import protocol as p
from scanxfer.config import SenderConfig, load_sender_config
from scanxfer.sender.delivery import ONCE_CONNECT_ATTEMPTS, ONCE_FILE_ATTEMPTS, Delivery
from scanxfer.sender.job import FileJob
from scanxfer.sender.ledger import Destination, Ledger, State
from scanxfer.sender.run_state import LinkState
from scanxfer.sender.transport import Answer, ConnectionLost, Pulse, TransportKind

INITIAL, MAXIMUM = 1.0, 4.0  # retry_initial and retry_max of every test
# Far more steps than any test needs: a policy that stops making progress fails, not hangs.
STEP_LIMIT = 10_000


class VirtualClock:
    """Time that passes only when the policy waits, and exactly as long as it asks."""

    def __init__(self) -> None:
        self.time = 0.0
        self.stop_at: float | None = None  # a stop requested at this moment (a SIGTERM)

    def now(self) -> float:
        return self.time

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        if stop.is_set():
            return True
        if self.stop_at is not None and self.time + seconds >= self.stop_at:
            self.time = self.stop_at
            stop.set()
            return True
        self.time += seconds
        return False


@dataclass
class Offer:
    time: float
    connection: int
    relpath: str


@dataclass
class ScriptedReceiver:
    """What the fake transports reach: connections refused, files refused, links broken."""

    clock: VirtualClock
    window: int = 4
    refuse_connections: int = 0
    # For each file, the NACKs its successive offers get; once they run out, it is ACKed.
    nacks: dict[str, list[p.Nack]] = field(default_factory=dict)
    # For each connection, by number from 0, how many answers it gives before it breaks.
    breaks_after: dict[int, int] = field(default_factory=dict)
    # Called with each file ACKed, as its answer is given.
    on_ack: Callable[[str], None] = lambda relpath: None
    attempts: list[float] = field(default_factory=list)  # when each connection was tried
    connections: list[FakeTransport] = field(default_factory=list)
    offers: list[Offer] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    jobs: list[FileJob] = field(default_factory=list)

    def open(self, config: SenderConfig, alive: Callable[[], None]) -> FakeTransport:
        self.attempts.append(self.clock.now())
        if self.refuse_connections:
            self.refuse_connections -= 1
            raise ConnectionLost(f"cannot connect to receiver {config.receiver}: refused")
        number = len(self.connections)
        transport = FakeTransport(self, number, self.breaks_after.get(number))
        self.connections.append(transport)
        return transport

    def answer(self, job: FileJob, file_id: int) -> Answer:
        if refusals := self.nacks.get(job.relpath):
            return refusals.pop(0)
        self.stored.append(job.relpath)
        self.on_ack(job.relpath)
        return p.Ack(file_id, p.Outcome.STORED, job.relpath)

    def offered(self, connection: int | None = None) -> list[str]:
        return [o.relpath for o in self.offers if connection in (None, o.connection)]


class FakeTransport:
    """A `Transport` that answers one offered file per step, as the receiver's script says."""

    def __init__(self, receiver: ScriptedReceiver, number: int, breaks_after: int | None) -> None:
        self.receiver, self.number, self.breaks_after = receiver, number, breaks_after
        self.offered: list[tuple[int, FileJob]] = []
        self.answered = 0
        self.closed = False

    @property
    def free_slots(self) -> int:
        return self.receiver.window - len(self.offered)

    @property
    def in_flight(self) -> int:
        return len(self.offered)

    def offer(self, job: FileJob) -> None:
        assert job.handle is not None and job.digest, "offered before it was prepared"
        receiver = self.receiver
        receiver.offers.append(Offer(receiver.clock.now(), self.number, job.relpath))
        receiver.jobs.append(job)
        self.offered.append((len(receiver.offers), job))

    def step(self, wait: float) -> list[tuple[FileJob, Answer]]:
        if not self.offered:
            return []
        if self.answered == self.breaks_after:
            raise ConnectionLost("connection lost: reset by peer")
        self.answered += 1
        file_id, job = self.offered.pop(0)
        return [(job, self.receiver.answer(job, file_id))]

    def requeue(self) -> list[FileJob]:
        jobs = [job for _, job in self.offered]
        self.offered.clear()
        return jobs

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def receiver(clock: VirtualClock) -> ScriptedReceiver:
    return ScriptedReceiver(clock)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "state", Destination.of(settings(tmp_path), "scripted"))
    yield ledger
    ledger.close()


def settings(tmp_path: Path) -> SenderConfig:
    file = tmp_path / "sender.yaml"
    file.write_text(
        f"watch_dir: {tmp_path / 'scans'}\nstate_dir: {tmp_path / 'state'}\n"
        f"retry_initial: {INITIAL}\nretry_max: {MAXIMUM}\nafter_send: keep\n"
    )
    return load_sender_config(file)


def write_scans(tmp_path: Path, *names: str) -> None:
    for seed, name in enumerate(names):
        path = tmp_path / "scans" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.random.default_rng(seed).random((4, 4)))


def delivery_of(
    tmp_path: Path,
    ledger: Ledger,
    receiver: ScriptedReceiver,
    *names: str,
    once: bool = True,
) -> Delivery:
    kind = TransportKind("scripted", receiver.open, needs_key=False, done_message="%d")
    delivery = Delivery(settings(tmp_path), ledger, once=once, kind=kind, clock=receiver.clock)
    for name in names:
        delivery.add(name)
    return delivery


def run(delivery: Delivery) -> None:
    """What `send --once` does with its files: step until done, then close."""
    for _ in range(STEP_LIMIT):
        if delivery.finished:
            break
        delivery.step()
    else:
        pytest.fail("the delivery made no progress")
    delivery.close()


def times_delivered(ledger: Ledger) -> dict[str, int]:
    """Per file, how often the journal recorded a delivery of it."""
    with sqlite3.connect(ledger.path) as db:
        return dict(db.execute("SELECT path, versions FROM files WHERE state = 'delivered'"))


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def backoff_bounds(failures: int) -> tuple[float, float]:
    """The delay after `failures` earlier failures: doubled each time up to the maximum,
    less up to half of it at random (jitter)."""
    full = min(MAXIMUM, INITIAL * 2**failures)
    return full / 2, full


def assert_backed_off(gap: float, failures: int) -> None:
    low, high = backoff_bounds(failures)
    assert low - 1e-9 <= gap <= high + 1e-9, (gap, failures)


def test_refused_connections_are_retried_with_growing_capped_backoff(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    write_scans(tmp_path, "a.npy", "b.npy")
    receiver.refuse_connections = ONCE_CONNECT_ATTEMPTS + 2  # more than --once would bear
    delivery = delivery_of(tmp_path, ledger, receiver, "a.npy", "b.npy", once=False)
    run(delivery)
    assert len(receiver.attempts) == ONCE_CONNECT_ATTEMPTS + 3
    # Doubling from INITIAL, then never above MAXIMUM however many failures came before.
    for failures, gap in enumerate(gaps(receiver.attempts)):
        assert_backed_off(gap, failures)
    assert receiver.offered() == ["a.npy", "b.npy"]
    assert times_delivered(ledger) == {"a.npy": 1, "b.npy": 1}
    assert delivery.progress.files_done == 2 and not delivery.failed


def test_send_once_gives_up_on_an_unreachable_receiver(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    write_scans(tmp_path, "a.npy")
    receiver.refuse_connections = 1000
    delivery = delivery_of(tmp_path, ledger, receiver, "a.npy")
    run(delivery)
    assert len(receiver.attempts) == ONCE_CONNECT_ATTEMPTS
    assert "refused" in delivery.unreachable
    assert receiver.offered() == []
    assert [entry.path for entry in ledger.entries(State.PENDING)] == ["a.npy"]


def busy() -> p.Nack:
    return p.Nack(0, p.NackReason.BUSY, True, "busy")


def test_a_retryable_refusal_is_offered_again_after_a_backoff(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    write_scans(tmp_path, "a.npy")
    receiver.nacks["a.npy"] = [busy(), busy()]
    delivery = delivery_of(tmp_path, ledger, receiver, "a.npy")
    run(delivery)
    assert receiver.offered() == ["a.npy"] * 3
    for failures, gap in enumerate(gaps([offer.time for offer in receiver.offers])):
        assert_backed_off(gap, failures)
    [entry] = ledger.entries(State.DELIVERED)
    assert entry.attempts == 2 and entry.last_error is None
    assert times_delivered(ledger) == {"a.npy": 1}
    assert delivery.failed == [] and delivery.progress.files_done == 1


def test_send_once_gives_up_on_a_file_refused_again_and_again(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    write_scans(tmp_path, "a.npy")
    receiver.nacks["a.npy"] = [busy() for _ in range(100)]
    delivery = delivery_of(tmp_path, ledger, receiver, "a.npy")
    run(delivery)
    assert receiver.offered() == ["a.npy"] * ONCE_FILE_ATTEMPTS
    assert delivery.failed == [("a.npy", "busy: busy")]
    assert [entry.path for entry in ledger.entries(State.PENDING)] == ["a.npy"]  # next run


def test_a_permanent_refusal_is_not_retried_until_the_file_changes(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    write_scans(tmp_path, "a.npy", "b.npy")
    refusal = p.Nack(0, p.NackReason.BAD_NAME, False, "not a name it takes")
    receiver.nacks["a.npy"] = [refusal]
    first = delivery_of(tmp_path, ledger, receiver, "a.npy", "b.npy")
    run(first)
    assert receiver.offered() == ["a.npy", "b.npy"]
    assert first.failed == [("a.npy", "bad_name: not a name it takes")]
    [failed] = ledger.entries(State.FAILED)
    assert failed.path == "a.npy" and failed.last_error == "bad_name: not a name it takes"
    assert times_delivered(ledger) == {"b.npy": 1}

    second = delivery_of(tmp_path, ledger, receiver, "a.npy", "b.npy")
    run(second)
    assert receiver.offered() == ["a.npy", "b.npy"]  # nothing offered again
    assert second.failed == [("a.npy", "refused before and unchanged since")]
    assert second.progress.files_already_delivered == 1


@pytest.mark.parametrize(
    ("reason", "waits"),
    [(p.NackReason.NO_SPACE, True), (p.NackReason.DIGEST_MISMATCH, False)],
)
def test_no_space_pauses_and_a_digest_mismatch_is_sent_again_at_once(
    tmp_path: Path,
    ledger: Ledger,
    receiver: ScriptedReceiver,
    reason: p.NackReason,
    waits: bool,
) -> None:
    write_scans(tmp_path, "a.npy")
    receiver.nacks["a.npy"] = [p.Nack(0, reason, True, "scripted")]
    delivery = delivery_of(tmp_path, ledger, receiver, "a.npy")
    run(delivery)
    first, again = receiver.offers
    if waits:
        assert_backed_off(again.time - first.time, 0)
    else:
        assert again.time == first.time
    assert times_delivered(ledger) == {"a.npy": 1}


def test_files_in_flight_on_a_lost_connection_are_offered_again_and_recorded_once(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    names = ["a.npy", "b.npy", "c.npy"]
    write_scans(tmp_path, *names)
    receiver.refuse_connections = 2
    receiver.breaks_after = {0: 1, 1: 0}  # the first link answers a.npy, the second nothing
    delivery = delivery_of(tmp_path, ledger, receiver, *names)
    run(delivery)
    assert receiver.offered(0) == names
    assert receiver.offered(1) == ["b.npy", "c.npy"]
    assert receiver.offered(2) == ["b.npy", "c.npy"]  # in their order, before anything new
    assert receiver.stored == names
    assert times_delivered(ledger) == dict.fromkeys(names, 1)
    assert delivery.progress.files_done == 3 and not delivery.failed
    assert all(job.handle is None for job in receiver.jobs)
    # Two refusals back off twice; the delivery of a.npy starts the backoff over.
    for failures, gap in zip([0, 1, 0, 1], gaps(receiver.attempts), strict=True):
        assert_backed_off(gap, failures)


def test_a_stop_with_files_in_flight_leaves_them_owed(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    names = ["a.npy", "b.npy", "c.npy"]
    write_scans(tmp_path, *names)
    first = delivery_of(tmp_path, ledger, receiver, *names)
    receiver.on_ack = lambda relpath: first.stop.set()
    run(first)
    assert receiver.stored == ["a.npy"]
    assert times_delivered(ledger) == {"a.npy": 1}
    assert {entry.path for entry in ledger.entries(State.PENDING, State.SENDING)} == {
        "b.npy",
        "c.npy",
    }
    assert all(job.handle is None for job in receiver.jobs)

    receiver.on_ack = lambda relpath: None
    second = delivery_of(tmp_path, ledger, receiver, *names)
    run(second)
    assert receiver.stored == names
    assert second.progress.files_already_delivered == 1
    assert times_delivered(ledger) == dict.fromkeys(names, 1)


def test_a_stop_during_a_backoff_ends_the_wait(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver, clock: VirtualClock
) -> None:
    write_scans(tmp_path, "a.npy")
    receiver.refuse_connections = 1000
    clock.stop_at = 0.25  # sooner than any backoff ends
    delivery = delivery_of(tmp_path, ledger, receiver, "a.npy", once=False)
    run(delivery)
    assert receiver.attempts == [0.0]  # no second attempt after the stop
    assert clock.now() == 0.25
    assert delivery.progress.files_done == 0 and receiver.offered() == []


def test_the_link_says_retrying_with_the_last_error_then_connected(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    write_scans(tmp_path, "a.npy")
    receiver.refuse_connections = 2
    delivery = delivery_of(tmp_path, ledger, receiver, "a.npy", once=False)
    delivery.step()
    assert delivery.link.state is LinkState.RETRYING
    assert delivery.link.last_error is not None and "refused" in delivery.link.last_error
    assert delivery.link.next_attempt is not None
    delivery.step()
    assert (delivery.link.state, delivery.link.failures) == (LinkState.RETRYING, 2)
    run(delivery)
    assert receiver.stored == ["a.npy"]
    assert delivery.link.state is LinkState.IDLE  # closed at the end of the run
    assert delivery.link.failures == 0 and "refused" in (delivery.link.last_error or "")


def test_the_file_being_sent_is_known_until_it_is_answered_or_the_link_is_lost(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    write_scans(tmp_path, "a.npy", "b.npy")
    receiver.breaks_after = {0: 1}
    delivery = delivery_of(tmp_path, ledger, receiver, "a.npy", "b.npy", once=False)
    seen: list[list[str]] = []
    receiver.on_ack = lambda relpath: seen.append(list(delivery.offered))
    run(delivery)
    # Both offered at once; while a.npy was answered, both were in flight.
    assert seen[0] == ["a.npy", "b.npy"]
    assert receiver.stored == ["a.npy", "b.npy"] and delivery.offered == {}


def test_reach_connects_even_with_nothing_to_send(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    delivery = delivery_of(tmp_path, ledger, receiver)
    assert delivery.reach()
    assert len(receiver.connections) == 1 and delivery.link.state is LinkState.CONNECTED
    delivery.close()
    unreachable = ScriptedReceiver(receiver.clock, refuse_connections=1000)
    delivery = delivery_of(tmp_path, ledger, unreachable)
    assert not delivery.reach()
    assert len(unreachable.attempts) == ONCE_CONNECT_ATTEMPTS
    assert "refused" in delivery.unreachable


def test_a_receiver_out_of_space_pauses_the_link_with_its_reason(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver
) -> None:
    write_scans(tmp_path, "a.npy")
    receiver.nacks["a.npy"] = [p.Nack(0, p.NackReason.NO_SPACE, True, "disk full")]
    delivery = delivery_of(tmp_path, ledger, receiver, "a.npy", once=False)
    states = []
    for _ in range(STEP_LIMIT):
        if delivery.finished:
            break
        delivery.step()
        states.append((delivery.link.state, delivery.link.failures))
    assert (LinkState.PAUSED, 1) in states
    assert delivery.link.last_error == "no_space: disk full"
    assert states[-1] == (LinkState.CONNECTED, 0)  # acknowledged after the pause
    assert receiver.stored == ["a.npy"]


def test_a_stop_mid_file_keeps_it_owed_without_a_retry(
    tmp_path: Path, ledger: Ledger, receiver: ScriptedReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    names = ["a.npy", "b.npy"]
    write_scans(tmp_path, *names)

    def open_then_stop(config: SenderConfig, pulse: Pulse) -> FakeTransport:
        transport = receiver.open(config, pulse)

        def step(wait: float) -> list[tuple[FileJob, Answer]]:
            delivery.stop.set()  # SIGINT while the payload streams...
            pulse()  # ...noticed between two slices: raises Stopped
            raise AssertionError("the pulse did not stop the transfer")

        transport.step = step  # type: ignore[method-assign]
        return transport

    kind = TransportKind("scripted", open_then_stop, needs_key=False, done_message="%d")
    delivery = Delivery(settings(tmp_path), ledger, once=True, kind=kind, clock=receiver.clock)
    for name in names:
        delivery.add(name)
    with caplog.at_level(logging.INFO, "scanxfer"):
        run(delivery)
    assert receiver.attempts == [0.0]  # a stop is not a lost connection: no retry
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "stopped mid-file" in caplog.text
    assert {entry.path for entry in ledger.entries(State.PENDING, State.SENDING)} == set(names)
    assert all(job.handle is None for job in receiver.jobs)

    second = delivery_of(tmp_path, ledger, receiver, *names)
    run(second)
    assert receiver.stored == names
    assert times_delivered(ledger) == dict.fromkeys(names, 1)
