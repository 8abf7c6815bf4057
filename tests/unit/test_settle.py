"""Tests for scanxfer.watcher.settle: the watcher's decisions on a clock the test moves.

No file, thread or sleep: each test says what the event sources and sweeps saw and what the
judge (readiness.assess in the daemon) would find, moves the clock, and asks what is handed out.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import pytest

from scanxfer.watcher import BUSY_RECHECK_SECONDS, Condition, Readiness, SettlePolicy, Version

SETTLE = 2.0
LONG = 1000 * SETTLE  # far beyond any timer the policy sets


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class Scene:
    """A policy on a fake clock, and the files as its judge would find them."""

    def __init__(self, settle: float = SETTLE) -> None:
        self.clock = FakeClock()
        self.policy = SettlePolicy(settle, self.clock)
        self.verdicts: dict[PurePosixPath, Readiness] = {}
        self.judged: list[str] = []  # every file the judge was asked about, in order
        self._changes = 0

    def judge(self, rel: PurePosixPath) -> Readiness:
        self.judged.append(rel.as_posix())
        return self.verdicts.get(rel, Readiness(Condition.GONE, None, "gone"))

    def change(
        self, name: str, condition: Condition = Condition.READY, mtime: int | None = None
    ) -> Version:
        """``name`` gets a new version, as the judge will find it; no event says so.

        The ctime moves on every change, as the kernel's does; the mtime too unless given.
        """
        self._changes += 1
        stamp = self._changes if mtime is None else mtime
        version = Version(size=800, mtime_ns=stamp, ctime_ns=self._changes, inode=7)
        self.verdicts[PurePosixPath(name)] = Readiness(condition, version, condition.value)
        return version

    def write(
        self, name: str, condition: Condition = Condition.READY, mtime: int | None = None
    ) -> Version:
        """``name`` changes and an event says so."""
        version = self.change(name, condition, mtime)
        self.policy.touched(PurePosixPath(name), version)
        return version

    def after(self, seconds: float) -> list[str]:
        """Move the clock on by ``seconds``; the files the policy hands out then."""
        self.clock.now += seconds
        return [rel.as_posix() for rel in self.policy.settled(self.judge)]

    def versions(self, *names: str) -> dict[PurePosixPath, Version]:
        found = {}
        for name in names:
            version = self.verdicts[PurePosixPath(name)].version
            assert version is not None
            found[PurePosixPath(name)] = version
        return found


@pytest.fixture
def scene() -> Scene:
    return Scene()


def test_a_file_is_judged_once_it_has_been_quiet_for_settle_seconds(scene: Scene) -> None:
    scene.write("a.npy")
    assert scene.after(SETTLE * 0.99) == []
    assert scene.judged == []
    assert scene.after(SETTLE * 0.01) == ["a.npy"]
    assert scene.after(LONG) == []
    assert scene.judged == ["a.npy"]


def test_pauses_shorter_than_settle_seconds_never_split_a_file(scene: Scene) -> None:
    """A file without a .npy header has only the quiet time to say it is complete."""
    for _ in range(8):
        scene.write("log.dat")
        assert scene.after(SETTLE * 0.9) == []
    assert scene.judged == []
    assert scene.after(SETTLE * 0.1) == ["log.dat"]
    assert scene.after(LONG) == []
    assert scene.judged == ["log.dat"]


def test_settle_zero_judges_at_the_next_look() -> None:
    scene = Scene(settle=0.0)
    scene.write("a.npy")
    assert scene.after(0.0) == ["a.npy"]


def test_a_negative_settle_time_is_refused() -> None:
    with pytest.raises(ValueError, match="settle_seconds"):
        SettlePolicy(-1.0)


def test_each_version_is_handed_out_once_and_a_new_one_again(scene: Scene) -> None:
    scene.write("a.npy")
    assert scene.after(SETTLE) == ["a.npy"]
    # Sweeps that find the same version, and the events our own reads do not raise, change nothing.
    scene.policy.rescanned(scene.versions("a.npy"))
    scene.policy.polled(scene.versions("a.npy"))
    assert scene.after(LONG) == []
    scene.write("a.npy")
    assert scene.after(SETTLE) == ["a.npy"]
    assert scene.after(LONG) == []


def test_an_event_that_leaves_the_version_as_it_was_judged_hands_nothing_out(
    scene: Scene,
) -> None:
    """A copy tool's last event (setting the mtime) can arrive after the file was judged."""
    version = scene.write("a.npy")
    assert scene.after(SETTLE) == ["a.npy"]
    scene.policy.touched(PurePosixPath("a.npy"), version)
    assert scene.after(SETTLE) == []
    assert scene.judged == ["a.npy", "a.npy"]


def test_an_in_place_change_with_the_mtime_put_back_is_a_new_version(scene: Scene) -> None:
    first = scene.write("a.npy", mtime=42)
    assert scene.after(SETTLE) == ["a.npy"]
    second = scene.write("a.npy", mtime=42)
    assert (second.size, second.mtime_ns) == (first.size, first.mtime_ns)
    assert scene.after(SETTLE) == ["a.npy"]


def test_an_incomplete_file_waits_for_its_next_change(scene: Scene) -> None:
    scene.write("slow.npy", Condition.INCOMPLETE)
    assert scene.after(SETTLE) == []
    assert scene.after(LONG) == []
    assert scene.judged == ["slow.npy"]  # judged once, not over and over
    scene.write("slow.npy")  # the last byte arrives
    assert scene.after(SETTLE) == ["slow.npy"]


@pytest.mark.parametrize("settle", [BUSY_RECHECK_SECONDS / 4, BUSY_RECHECK_SECONDS * 3])
def test_a_file_held_by_a_writer_is_looked_at_again_without_an_event(settle: float) -> None:
    """Its writer's close or unmap may raise no event, so the policy comes back by itself."""
    scene = Scene(settle)
    version = scene.write("held.npy", Condition.WRITING)
    recheck = max(settle, BUSY_RECHECK_SECONDS)
    assert scene.after(settle) == []
    assert scene.after(recheck * 0.99) == []
    assert scene.judged == ["held.npy"]
    # Released, unchanged: the same version, now free of writers.
    scene.verdicts[PurePosixPath("held.npy")] = Readiness(Condition.READY, version)
    assert scene.after(recheck * 0.01) == ["held.npy"]
    assert scene.after(LONG) == []


def test_a_file_still_held_is_never_handed_out(scene: Scene) -> None:
    scene.write("held.npy", Condition.WRITING)
    handed_out = [scene.after(BUSY_RECHECK_SECONDS) for _ in range(50)]
    assert handed_out == [[]] * 50
    assert len(scene.judged) > 10  # it kept looking


def test_a_change_without_an_event_restarts_the_quiet_period(scene: Scene) -> None:
    """A write through a memory map raises no event; only the version shows it."""
    scene.write("mapped.npy")
    scene.change("mapped.npy")
    assert scene.after(SETTLE) == []
    assert scene.after(SETTLE * 0.99) == []
    assert scene.after(SETTLE * 0.01) == ["mapped.npy"]


def test_a_file_that_changed_while_it_was_checked_is_judged_again(scene: Scene) -> None:
    version = scene.write("a.npy", Condition.CHANGING)
    assert scene.after(SETTLE) == []
    scene.verdicts[PurePosixPath("a.npy")] = Readiness(Condition.READY, version)
    assert scene.after(SETTLE) == ["a.npy"]


def test_a_vanished_file_is_forgotten(scene: Scene) -> None:
    scene.write("a.npy")
    del scene.verdicts[PurePosixPath("a.npy")]
    assert scene.after(SETTLE) == []
    assert scene.after(LONG) == []
    assert scene.judged == ["a.npy"]


def test_a_deleted_or_moved_away_file_is_never_judged(scene: Scene) -> None:
    scene.write("a.npy")
    scene.policy.forget(PurePosixPath("a.npy"))
    assert scene.after(LONG) == []
    assert scene.judged == []


def test_a_directory_that_goes_takes_its_files_along(scene: Scene) -> None:
    for name in ("run/a.npy", "run/deep/b.npy", "runner/c.npy", "d.npy"):
        scene.write(name)
    scene.policy.forget_below(PurePosixPath("run"))
    assert scene.after(SETTLE) == ["runner/c.npy", "d.npy"]  # oldest first


def test_a_batch_is_handed_out_oldest_mtime_first_then_by_name(scene: Scene) -> None:
    scene.write("new.npy", mtime=3000)
    scene.write("sub/old.npy", mtime=1000)
    scene.write("b.npy", mtime=2000)
    scene.write("a.npy", mtime=2000)
    assert scene.after(SETTLE) == ["sub/old.npy", "a.npy", "b.npy", "new.npy"]


def test_not_ready_files_do_not_hold_back_the_others(scene: Scene) -> None:
    scene.write("bad.npy", Condition.INCOMPLETE)
    scene.write("locked.npy", Condition.UNREADABLE)
    scene.write("good.npy")
    assert scene.after(SETTLE) == ["good.npy"]
    assert scene.after(LONG) == []


def test_an_unreadable_file_is_reported_once(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    scene.write("locked.npy", Condition.UNREADABLE)
    with caplog.at_level(logging.WARNING, logger="scanxfer.watcher"):
        assert scene.after(SETTLE) == []
        assert scene.after(LONG) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "locked.npy" in warnings[0]
    scene.write("locked.npy")  # its mode changed: a new ctime, so a new version
    assert scene.after(SETTLE) == ["locked.npy"]


def test_reconsider_hands_out_a_judged_file_again(scene: Scene) -> None:
    scene.write("a.npy")
    assert scene.after(SETTLE) == ["a.npy"]
    assert scene.after(LONG) == []
    scene.policy.reconsider(PurePosixPath("a.npy"))
    assert scene.after(SETTLE * 0.99) == []
    assert scene.after(SETTLE * 0.01) == ["a.npy"]
    assert scene.after(LONG) == []


def test_a_rescan_adds_what_events_missed_but_never_postpones_a_candidate(scene: Scene) -> None:
    scene.write("pending.npy")
    scene.after(SETTLE / 2)
    scene.change("missed.npy")  # moved in inside a directory inotify never watched
    scene.policy.rescanned(scene.versions("pending.npy", "missed.npy"))
    assert scene.after(SETTLE / 2) == ["pending.npy"]
    assert scene.after(SETTLE / 2) == ["missed.npy"]
    scene.policy.rescanned(scene.versions("pending.npy", "missed.npy"))
    assert scene.after(LONG) == []


def test_a_rescan_does_not_forget_files_it_did_not_look_at(scene: Scene) -> None:
    """A new directory's sweep sees only that directory."""
    scene.write("a.npy")
    scene.change("new/b.npy")
    scene.policy.rescanned(scene.versions("new/b.npy"))
    assert scene.after(SETTLE) == ["a.npy", "new/b.npy"]


def test_polling_restarts_the_quiet_period_of_a_changed_file(scene: Scene) -> None:
    scene.change("a.npy")
    scene.policy.polled(scene.versions("a.npy"))
    scene.after(SETTLE / 2)
    scene.change("a.npy")
    scene.policy.polled(scene.versions("a.npy"))
    assert scene.after(SETTLE / 2) == []
    assert scene.judged == []
    assert scene.after(SETTLE / 2) == ["a.npy"]
    scene.policy.polled(scene.versions("a.npy"))
    assert scene.after(LONG) == []


def test_polling_forgets_files_it_no_longer_finds(scene: Scene) -> None:
    scene.change("a.npy")
    scene.change("b.npy")
    scene.policy.polled(scene.versions("a.npy", "b.npy"))
    scene.policy.polled(scene.versions("b.npy"))
    assert scene.after(SETTLE) == ["b.npy"]
    assert scene.judged == ["b.npy"]
