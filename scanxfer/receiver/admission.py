"""Whether a file of a given size may come in at all: the size limit and the free space.

Both doors ask this before a byte of payload is accepted, so a peer cannot fill the disk
or announce an absurd size and be believed.  The verdict is data, not a message: the
scanxfer door turns it into a NACK the sender acts on, the prototype door (whose wire has
no NACK) into a log line for the administrator before it closes the connection.

Free space alone would let several files in flight each be admitted against the same free
bytes, so that together they take the disk below min_free_space.  Every file admitted is
therefore given a `Reservation` in one receiver-wide `Reservations`: the bytes it still has
to bring, which the next offers count as taken until they arrive (then the disk's own free
space shows them) or the file is done with (stored, refused, withdrawn, or its connection
gone).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..config import ReceiverConfig


@dataclass(frozen=True)
class Limits:
    """The settings admission depends on; taken from the config a connection started with."""

    max_file_size: int
    min_free_space: int  # bytes that must stay free after the file is stored

    @classmethod
    def of(cls, config: ReceiverConfig) -> Limits:
        return cls(config.max_file_size, config.min_free_space)


@dataclass(frozen=True)
class TooLarge:
    """The file is larger than max_file_size: sending it again cannot help."""

    size: int
    limit: int


@dataclass(frozen=True)
class NoRoom:
    """Storing the file would leave less than min_free_space: it may fit once space is freed.

    `promised`: bytes of the free space still to come for files admitted before this one.
    """

    size: int
    free: int
    reserve: int
    promised: int = 0


Refusal = TooLarge | NoRoom


class Reservation:
    """The bytes one admitted file has still to bring; shrinks as they are written.

    Only its connection's thread calls `arrived`; the int it updates is read by other
    threads under the lock of `Reservations`, where a stale value errs on the safe side.
    """

    def __init__(self, owner: Reservations, needed: int) -> None:
        self._owner = owner
        self.outstanding = needed

    def arrived(self, count: int) -> None:
        """`count` more bytes are on the disk: the free space shows them from now on."""
        self.outstanding = max(0, self.outstanding - count)

    def renew(self, needed: int) -> None:
        """The bytes held were dropped (they did not match): the whole file is due again.

        No new check: dropping them freed the very space the file now needs.
        """
        self.outstanding = needed

    def release(self) -> None:
        """The file is done with, whatever became of it; calling this again is harmless."""
        self._owner.forget(self)


class Reservations:
    """The bytes promised to admitted files still in flight, across every connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[Reservation] = set()

    def promised(self) -> int:
        with self._lock:
            return sum(reservation.outstanding for reservation in self._held)

    def forget(self, reservation: Reservation) -> None:
        with self._lock:
            self._held.discard(reservation)

    def admit(
        self, size: int, held: int, limits: Limits, free_bytes: Callable[[], int]
    ) -> Refusal | Reservation:
        """Admit a file of `size` bytes of which `held` are on the disk already (a resumed
        partial), reserving the rest; or why it may not come in.

        The check and the reservation are one step under the lock, so two connections
        cannot both be admitted against the same free bytes.  `free_bytes` is asked only
        once the size passes; the OSError of a failed look passes through.
        """
        refusal = too_large(size, limits)
        if refusal is not None:
            return refusal
        needed = max(0, size - held)
        with self._lock:
            promised = sum(reservation.outstanding for reservation in self._held)
            free = free_bytes()
            if needed + promised + limits.min_free_space > free:
                return NoRoom(size, free, limits.min_free_space, promised)
            reservation = Reservation(self, needed)
            self._held.add(reservation)
            return reservation


def too_large(size: int, limits: Limits) -> TooLarge | None:
    """Why a file of `size` bytes may never come in, or None: asked before anything is
    opened for it, so an absurd size costs nothing."""
    if size > limits.max_file_size:
        return TooLarge(size, limits.max_file_size)
    return None
