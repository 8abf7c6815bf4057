"""One file on its way to the receiver, whatever transport carries it.

A `FileJob` is opened and checked once (`prepare`) and then read only through that open
file, so what a transport sends, hashes and withdraws is always the version checked.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import xxhash

from .. import protocol as p
from ..watcher import Version

READ_CHUNK = 1 << 20
# From this size on the digest is computed while the file is sent, not before (see prepare):
# below it, reading the file twice costs little and the digest lets the receiver skip a
# file it already holds.
DEFER_DIGEST_FROM = 1 << 23


class NotReady(Exception):
    """The file is not the complete version it was queued as; it is not offered now."""


class FileChanged(Exception):
    """The file changed while being streamed, and this receiver cannot be told to drop it."""


@dataclass
class FileJob:
    """One file to deliver: the version it is offered as, and the open file it is read from.

    The file stays open from `prepare` until its answer, so every byte offered, streamed and
    hashed comes from the one inode that was checked, even if the name is replaced meanwhile.
    """

    relpath: str
    path: Path
    version: Version
    digest: bytes = b""
    # The digest of the delivered version of the same size, if any: then even a big file is
    # hashed before it is offered, so unchanged bytes (a chmod) are answered DUPLICATE unsent.
    known_digest: bytes | None = None
    sent_digest: bytes | None = None  # of the bytes streamed, for a deferred digest
    attempts: int = 0
    offered_at: float = 0.0  # time.monotonic() when it was offered, for -v's timings
    started: float = 0.0
    handle: BinaryIO | None = None

    @property
    def size(self) -> int:
        return self.version.size

    @property
    def mtime_ns(self) -> int:
        return self.version.mtime_ns

    def prepare(self, alive: Callable[[], None] = lambda: None) -> None:
        """Open the file, check it is still the version queued, and take its digest.

        A big file is not hashed here: it is offered with a deferred digest and hashed while
        it is sent (`BackgroundDigest`), so it is not read once more before the first byte
        goes out.  `alive` is called as the hashing goes: a slow disk takes a while, and a stop
        request raised from it ends the hashing between two reads.
        Raises NotReady if the file changed, OSError if it cannot be read.
        """
        handle = open(self.path, "rb", opener=_open_no_follow)  # noqa: SIM115 (kept open)
        try:
            self._check(os.fstat(handle.fileno()), "changed since it was checked")
            deferred = self.size >= DEFER_DIGEST_FROM and self.known_digest is None
            self.digest = p.DEFERRED_DIGEST if deferred else file_digest(handle.fileno(), alive)
            self._check(os.fstat(handle.fileno()), "changed while it was hashed")
        except BaseException:
            handle.close()
            raise
        self.handle = handle

    def _check(self, stat: os.stat_result, what: str) -> None:
        if Version.of(stat) != self.version:
            raise NotReady(what)

    def changed(self) -> str:
        """Why the file is no longer the version being sent, or "" if it still is."""
        assert self.handle is not None
        try:
            if self.path.lstat().st_ino != self.version.inode:
                return "was replaced while being sent"
        except FileNotFoundError:
            return "was removed while being sent"
        if Version.of(os.fstat(self.handle.fileno())) != self.version:
            return "changed while being sent"
        return ""

    def release(self) -> None:
        """Close the file: the job is answered, withdrawn or back in the queue."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _open_no_follow(path: str, flags: int) -> int:
    # A scan replaced by a symlink is not followed, as the watcher never follows one.
    return os.open(path, flags | os.O_NOFOLLOW)


class BackgroundDigest:
    """The digest of a whole file, computed in a thread while the file is sent.

    xxhash and file reads release the GIL, so the hash runs beside sendfile instead of
    before it, and its time comes off the transfer.  It reads a duplicate of the sending
    descriptor: the same inode, and its own to close.
    """

    def __init__(self, handle: BinaryIO, name: str) -> None:
        self._name = name
        self._digest = b""
        self._error: OSError | None = None
        self._abandoned = threading.Event()
        fd = os.dup(handle.fileno())
        self._thread = threading.Thread(target=self._run, args=(fd,), daemon=True)
        self._thread.start()

    def _run(self, fd: int) -> None:
        try:
            self._digest = file_digest(fd, self._go_on)
        except OSError as error:
            self._error = error
        except _Abandoned:
            pass
        finally:
            os.close(fd)

    def _go_on(self) -> None:
        if self._abandoned.is_set():
            raise _Abandoned

    def result(self, alive: Callable[[], None]) -> bytes:
        """The digest, once computed; `alive` is called at least once, then while waiting,
        and may raise (a stop), which ends the hashing too: nobody will ask for it again.

        At least once, so a stop asked for before this call is seen whether or not the
        hash has already finished: the answer does not depend on a race with the thread.
        """
        try:
            alive()
            while self._thread.is_alive():
                self._thread.join(timeout=0.2)
                alive()
        except BaseException:
            self._abandoned.set()
            raise
        if self._error is not None:
            raise FileChanged(f"{self._name} cannot be read any more: {self._error}")
        return self._digest


class _Abandoned(Exception):
    """The digest is no longer wanted (the transfer stopped): the thread ends early."""


def file_digest(fd: int, alive: Callable[[], None]) -> bytes:
    """xxh3-128 of the whole file behind `fd`, read at explicit offsets.

    Never through the descriptor's position: a duplicate shares it with the sending
    descriptor, whose position `socket.sendfile` moves after every slice.
    """
    hasher = xxhash.xxh3_128()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while count := os.preadv(fd, [buffer], offset):
        hasher.update(view[:count])
        offset += count
        alive()
    return hasher.digest()
