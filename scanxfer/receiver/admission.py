"""Whether a file of a given size may come in at all: the size limit and the free space.

Both doors ask this before a byte of payload is accepted, so a peer cannot fill the disk
or announce an absurd size and be believed.  The verdict is data, not a message: the
scanxfer door turns it into a NACK the sender acts on, the prototype door (whose wire has
no NACK) into a log line for the administrator before it closes the connection.
"""

from __future__ import annotations

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
    """Storing the file would leave less than min_free_space: it may fit once space is freed."""

    size: int
    free: int
    reserve: int


Refusal = TooLarge | NoRoom


def admit(size: int, limits: Limits, free_bytes: Callable[[], int]) -> Refusal | None:
    """Why a file of `size` bytes may not come in, or None if it may.

    `free_bytes` is asked only once the size passes, so an absurd size is refused even
    where the free space cannot be read; the OSError of a failed look passes through.
    """
    if size > limits.max_file_size:
        return TooLarge(size, limits.max_file_size)
    free = free_bytes()
    if size + limits.min_free_space > free:
        return NoRoom(size, free, limits.min_free_space)
    return None
