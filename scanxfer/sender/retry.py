"""How long the sender waits before trying again, and the clock it asks.

Exponential backoff with jitter, and `Clock`: the seam through which `Delivery`'s retry policy
reads and waits on time, so that policy runs in tests on a virtual clock.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Protocol


class Backoff:
    """Exponential backoff with jitter, so many senders do not retry in lockstep."""

    def __init__(self, initial: float, maximum: float, failures: int = 0) -> None:
        self.initial, self.maximum = initial, maximum
        self.failures = failures

    def next_delay(self) -> float:
        # The exponent is capped: past it the delay is the maximum anyway, and 2.0**1024
        # would overflow after a long run of refusals.
        delay = min(self.maximum, self.initial * 2.0 ** min(self.failures, 64))
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class Clock(Protocol):
    """Time as the retry policy sees it: a seam, so tests can run the policy without waiting."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait `seconds`, or less if `stop` is set meanwhile; return whether it is set."""
        ...


class SystemClock:
    """The real monotonic clock; waiting ends early when a stop is requested."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(seconds)
