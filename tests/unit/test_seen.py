"""When each sender was last seen (scanxfer.keys.seen): what reaches seen.json, and when."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scanxfer.keys.seen import (
    SEEN_FILE_NAME,
    SeenError,
    SeenLog,
    Sighting,
    read_seen,
    seen_path,
)

MORNING = datetime(2026, 11, 30, 9, 30, 0, tzinfo=UTC)
NOON = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return seen_path(tmp_path)


def test_seen_path_is_seen_json_in_the_state_dir(tmp_path: Path) -> None:
    assert seen_path(tmp_path) == tmp_path / SEEN_FILE_NAME == tmp_path / "seen.json"


def test_a_first_sighting_is_written_at_the_next_flush(path: Path, clock: Clock) -> None:
    seen = SeenLog(path, interval=300, clock=clock)
    assert not seen.flush() and not path.exists()  # nothing seen, nothing written
    seen.saw("lab-pc", "192.168.1.50", MORNING)
    assert not path.exists()  # a handshake never waits for the disk
    assert seen.flush()
    assert read_seen(path) == {"lab-pc": Sighting(MORNING, "192.168.1.50")}
    assert json.loads(path.read_text())["senders"]["lab-pc"] == {
        "at": "2026-11-30T09:30:00Z",
        "address": "192.168.1.50",
    }
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_known_sender_from_the_same_address_is_written_at_most_once_an_interval(
    path: Path, clock: Clock
) -> None:
    seen = SeenLog(path, interval=300, clock=clock)
    seen.saw("lab-pc", "192.168.1.50", MORNING)
    assert seen.flush()
    seen.saw("lab-pc", "192.168.1.50", NOON)
    clock.now += 299
    assert not seen.flush()
    assert read_seen(path)["lab-pc"].at == MORNING
    clock.now += 1
    assert seen.flush()
    assert read_seen(path)["lab-pc"].at == NOON
    assert not seen.flush()  # nothing new since


@pytest.mark.parametrize(
    ("name", "address"), [("lab-pc", "192.168.1.77"), ("beamline-7", "192.168.1.50")]
)
def test_a_new_address_or_a_new_sender_is_written_at_once(
    path: Path, clock: Clock, name: str, address: str
) -> None:
    seen = SeenLog(path, interval=300, clock=clock)
    seen.saw("lab-pc", "192.168.1.50", MORNING)
    assert seen.flush()
    seen.saw(name, address, NOON)
    assert seen.flush()  # no interval has passed
    assert read_seen(path)[name] == Sighting(NOON, address)


def test_force_writes_what_is_pending(path: Path, clock: Clock) -> None:
    seen = SeenLog(path, interval=300, clock=clock)
    seen.saw("lab-pc", "192.168.1.50", MORNING)
    seen.flush()
    seen.saw("lab-pc", "192.168.1.50", NOON)
    assert seen.flush(force=True)
    assert read_seen(path)["lab-pc"].at == NOON


def test_a_restarted_receiver_keeps_the_senders_it_has_not_seen_since(
    path: Path, clock: Clock
) -> None:
    first = SeenLog(path, clock=clock)
    first.saw("old-pc", "10.0.0.9", MORNING)
    first.flush()
    second = SeenLog(path, clock=clock)
    second.saw("lab-pc", "192.168.1.50", NOON)
    second.flush()
    assert read_seen(path) == {
        "old-pc": Sighting(MORNING, "10.0.0.9"),
        "lab-pc": Sighting(NOON, "192.168.1.50"),
    }


def test_a_sighting_without_a_time_is_now(path: Path) -> None:
    seen = SeenLog(path)
    before = datetime.now(UTC).replace(microsecond=0)
    seen.saw("lab-pc", "::1")
    seen.flush()
    at = read_seen(path)["lab-pc"].at
    assert at.tzinfo is not None and at >= before


def test_no_file_is_no_sightings(path: Path) -> None:
    assert read_seen(path) == {}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{", "Expecting"),
        (b'{"version": 2, "senders": {}}', '"version": 1'),
        (b'{"version": 1}', "the field 'senders' is missing"),
        (b'{"version": 1, "senders": {"a": {"at": "2026-11-30T09:30:00Z"}}}', "'address'"),
        (b'{"version": 1, "senders": {"a": {"at": "noon", "address": "x"}}}', "noon"),
        (b'{"version": 1, "senders": {"a": {"at": "2026-11-30T09:30", "address": "x"}}}', "UTC"),
        (b'{"version": 1, "senders": {"a": {"at": 5, "address": "x"}}}', "not text"),
    ],
)
def test_a_damaged_file_is_refused_with_the_fix(path: Path, content: bytes, problem: str) -> None:
    path.write_bytes(content)
    with pytest.raises(SeenError) as raised:
        read_seen(path)
    message = str(raised.value)
    assert problem in message
    assert f"{path} is damaged" in message and "delete it" in message


def test_the_receiver_starts_afresh_over_a_damaged_file(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path.write_bytes(b"not json")
    with caplog.at_level(logging.WARNING):
        seen = SeenLog(path)
    assert f"{path} is damaged" in caplog.text
    seen.saw("lab-pc", "192.168.1.50", MORNING)
    assert seen.flush()
    assert read_seen(path) == {"lab-pc": Sighting(MORNING, "192.168.1.50")}


def test_a_failed_write_is_logged_once_and_tried_again(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"  # missing for a while: the write fails, even for root
    path = seen_path(state)
    seen = SeenLog(path, interval=300, clock=clock)
    seen.saw("lab-pc", "192.168.1.50", MORNING)
    with caplog.at_level(logging.WARNING):
        assert not seen.flush()
        clock.now += 300
        assert not seen.flush()
    assert caplog.text.count(f"cannot record when senders were last seen in {path}") == 1
    assert "No such file or directory" in caplog.text
    state.mkdir()
    clock.now += 300
    assert seen.flush()
    assert read_seen(path) == {"lab-pc": Sighting(MORNING, "192.168.1.50")}
