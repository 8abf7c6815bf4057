"""The bandwidth limit on a fake clock: what `Pacer` asks to wait, and what that adds up to."""

from __future__ import annotations

import threading

import pytest

from scanxfer.sender.pacing import BURST_SECONDS, MAX_SLICE, MIN_SLICE, SLICE_SECONDS, Pacer
from scanxfer.sender.transport import Pulse, Stopped

MB = 1_000_000


def paced_run(pacer: Pacer, total: int, send_seconds: float = 0.0) -> float:
    """Send `total` bytes in the pacer's slices on a fake clock; the seconds it took.

    Each slice takes `send_seconds` to go out, then the clock jumps by the asked delay.
    """
    now = 0.0
    sent = 0
    while sent < total:
        count = min(pacer.slice_size(), total - sent)
        now += send_seconds
        sent += count
        now += pacer.delay(count, now)
    return now


def test_no_limit_never_waits_and_sends_big_slices() -> None:
    pacer = Pacer(None)
    assert pacer.delay(1 << 30, 0.0) == 0.0
    assert pacer.slice_size() == MAX_SLICE


@pytest.mark.parametrize("rate", [10_000, 1 * MB, 40 * MB, 100 * MB, 5_000 * MB])
def test_the_average_rate_is_the_limit(rate: int) -> None:
    total = 1 << 30 if rate >= MB else 1 << 20
    seconds = paced_run(Pacer(rate), total)
    assert total / seconds == pytest.approx(rate, rel=1e-9)


def test_a_fast_link_is_held_back_and_a_slow_one_is_not_held_more() -> None:
    # Each slice takes longer to go out than its share of the limit: the pacer adds nothing.
    pacer = Pacer(10 * MB)
    slice_size = pacer.slice_size()
    assert pacer.delay(slice_size, 1.0) == pytest.approx(slice_size / (10 * MB))
    slow = SLICE_SECONDS * 3  # the link itself takes 3 x the slice's share
    assert pacer.delay(slice_size, 1.0 + slow + slice_size / (10 * MB)) == 0.0


def test_a_pause_earns_only_a_short_burst() -> None:
    pacer = Pacer(10 * MB)
    pacer.delay(MB, 0.0)  # paid until 0.1 s
    # An hour without sending: at most BURST_SECONDS' worth goes out without waiting.
    now = 3600.0
    burst = int(10 * MB * BURST_SECONDS)
    assert pacer.delay(burst, now) == 0.0
    assert pacer.delay(MB, now) == pytest.approx(0.1)


def test_slices_are_a_tenth_of_a_second_of_the_rate_within_bounds() -> None:
    assert Pacer(40 * MB).slice_size() == int(40 * MB * SLICE_SECONDS)
    assert Pacer(1_000).slice_size() == MIN_SLICE
    assert Pacer(10_000 * MB).slice_size() == MAX_SLICE
    assert Pacer(10_000 * MB).slice_size(ceiling=1 << 18) == 1 << 18


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(0)


def test_the_pulse_counts_checks_in_and_stops() -> None:
    beats: list[str] = []
    counted: list[tuple[str, int]] = []

    class Meter:
        def resumed(self, relpath: str, offset: int) -> None:
            counted.append((relpath, -offset))

        def sent(self, relpath: str, count: int) -> None:
            counted.append((relpath, count))

    stop = threading.Event()
    pulse = Pulse(lambda: beats.append("alive"), stop, Meter())
    pulse.resumed("a.npy", 5)
    pulse.sent("a.npy", 7)
    assert counted == [("a.npy", -5), ("a.npy", 7)]
    assert beats == ["alive"]
    stop.set()
    with pytest.raises(Stopped):
        pulse.sent("a.npy", 1)
    with pytest.raises(Stopped):
        pulse()  # hashing checks in the same way


@pytest.mark.parametrize("link_share", [0.5, 1.0, 2.0])
def test_a_link_near_the_limit_loses_at_most_the_first_slice(link_share: float) -> None:
    # Each slice takes `link_share` x its share of the limit to go out: that time is not
    # charged again as a wait, so the run ends after the link's own time plus one slice at most.
    rate, total = 100 * MB, 1 << 30
    per_slice = Pacer(rate).slice_size() / rate * link_share
    seconds = paced_run(Pacer(rate), total, send_seconds=per_slice)
    assert seconds <= max(total / rate, total / rate * link_share) + SLICE_SECONDS
