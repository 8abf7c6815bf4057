"""The receiver's durable storage: partial files, fsync, no-overwrite placement, name checks.

No sockets and no wire format here. One `Store` is shared by all connection threads; each file
being received is a `PartialFile` used by one thread.

Durability. Bytes go into a partial file (see `partial`). On commit the whole-file xxh3-128 digest
is checked, the file is fsynced, hard-linked (renamed, where the filesystem has no hard links) to
its final name, and the destination directory is fsynced. A batch does the same in steps: seal
each, one syncfs for all (`Store.sync_sealed`), place each, one fsync per directory. A crash
never leaves a partial file under a final name, and a stored file is never overwritten.

Name clashes. If the final name is free the file is stored there (``stored``). If anything is
there (a file, a directory, or a symlink, which is never followed):

* an identical file (same size and xxh3-128 digest) at the name or at one of its clash names means
  nothing new is stored (``duplicate``);
* otherwise the file is kept beside, under the first free clash name (see `names`)
  (``kept_beside``).

Everything under the incoming directory is reached through directory file descriptors opened with
``O_NOFOLLOW`` (see `dirs`), so a symlink planted there can never make the receiver write outside
it. Errors live in `errors`, the claims on partials and their index by path in `claims`; this
module holds the digest cache and the placement of finished files.
"""

from __future__ import annotations

import enum
import errno
import itertools
import os
import stat
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .claims import Claims
from .dirs import SettledDirs, opened_dir, opened_subdir
from .errors import (
    BadName,
    Busy,
    DigestMismatch,
    NoSpace,
    StorageIOError,
    StoreError,
    StoreSetupError,
    io_error,
)
from .names import PARTIAL_FOLDER, StoreLimits, check_name, clash_entries, free_name
from .partial import (
    LeftoverPartial,
    PartialFile,
    hash_fd,
    partial_key,
    remove_partial,
    scan_partials,
)
from .setup import Folders, adopt_partials, describe_error, free_space, prepare

__all__ = [
    "PARTIAL_FOLDER",
    "BadName",
    "Busy",
    "DigestMismatch",
    "Folders",
    "LeftoverPartial",
    "NoSpace",
    "Outcome",
    "PartialFile",
    "StorageIOError",
    "Store",
    "StoreError",
    "StoreLimits",
    "StoreSetupError",
    "StoredFile",
    "adopt_partials",
]

_DIGEST_CACHE_SIZE = 4096
_PLACE_ATTEMPTS = 100
_NO_HARDLINK_ERRNOS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    KEPT_BESIDE = "kept_beside"


@dataclass(frozen=True)
class StoredFile:
    path: str  # posix, relative to the incoming directory, as actually stored
    outcome: Outcome
    size: int


class Store:
    """Durable storage for received files; safe to share between threads.

    Each `PartialFile` holds its store and uses of it `partial_dir`, `claims`, `opened` and
    `place_partial`, nothing else.
    """

    def __init__(
        self,
        incoming_dir: Path,
        partial_dir: Path | None,
        limits: StoreLimits,
        *,
        own: Path = Path("/"),
        min_free_space: int = 0,
    ) -> None:
        """Make and check the folders (see `setup.prepare`); raises StoreSetupError.

        `partial_dir` None is the default, a hidden folder inside `incoming_dir`; missing
        parents are made only under `own`; `min_free_space` must be free to start at all.
        """
        self.folders = Folders.of(incoming_dir, partial_dir, own)
        self.incoming_dir = self.folders.incoming
        self.partial_dir = self.folders.partial
        self.limits = limits
        self._lock = threading.Lock()
        self.opened = itertools.count()  # numbers the partials in the order they are opened
        self._digests: dict[tuple[str, int, int, int], bytes] = {}
        self._settled = SettledDirs()  # directories whose own entry is durable
        prepare(self.folders, min_free_space)
        try:
            leftovers = scan_partials(self.partial_dir)
        except OSError as exc:
            raise StoreSetupError(
                f"cannot read the partial folder {self.partial_dir}: "
                f"{describe_error(exc, self.partial_dir)}"
            ) from exc
        # Shared with every PartialFile: which keys are in use, which idle ones each path has.
        self.claims = Claims((key, left.path) for key, left in leftovers if left.path)

    def check_name(self, relpath: str) -> tuple[str, ...]:
        """Validate an offered relative path and return its components, or raise BadName."""
        return check_name(relpath, self.limits)

    def find_identical(self, relpath: str, size: int, digest: bytes) -> StoredFile | None:
        """Return the stored file identical to this offer (as DUPLICATE), if there is one.

        Only when ``relpath`` itself exists, as commit stores into a free name without looking
        further. Raises BadName for an invalid name or a symlinked directory.
        """
        parts = self.check_name(relpath)
        try:
            with opened_subdir(
                self.incoming_dir, parts[:-1], relpath, create=False, settled=self._settled
            ) as dir_fd:
                if dir_fd is None:
                    return None
                entries = clash_entries(dir_fd, parts[-1])
                return self._identical_in(dir_fd, parts, entries, size, digest)
        except OSError as exc:
            raise io_error(exc, f"looking for a stored copy of {relpath!r}") from exc

    def holds_size(self, relpath: str, size: int) -> bool:
        """Whether ``relpath`` or one of its clash names is a regular file of ``size`` bytes.

        The cheap first look for an offer whose digest comes later: only such a file can be
        identical to it (see `find_identical`).  Raises like `find_identical`.
        """
        parts = self.check_name(relpath)
        try:
            with opened_subdir(self.incoming_dir, parts[:-1], relpath, create=False) as dir_fd:
                if dir_fd is None:
                    return False
                entries = clash_entries(dir_fd, parts[-1])
        except OSError as exc:
            raise io_error(exc, f"looking for a stored copy of {relpath!r}") from exc
        return any(stat.S_ISREG(st.st_mode) and st.st_size == size for st in entries.values())

    def _identical_in(
        self,
        dir_fd: int,
        parts: tuple[str, ...],
        entries: dict[str, os.stat_result],
        size: int,
        digest: bytes,
    ) -> StoredFile | None:
        for name, st in entries.items():
            if stat.S_ISREG(st.st_mode) and st.st_size == size:
                path = "/".join((*parts[:-1], name))
                if self._digest_of(dir_fd, name, path, st) == digest:
                    _make_durable(dir_fd, name)
                    return StoredFile(path, Outcome.DUPLICATE, size)
        return None

    def _digest_of(self, dir_fd: int, name: str, path: str, st: os.stat_result) -> bytes:
        """xxh3-128 of a stored regular file, cached by identity so repeated offers are cheap."""
        cache_key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._digests.get(cache_key)
        if cached is not None:
            return cached
        hasher = xxhash.xxh3_128()
        # O_NONBLOCK: a FIFO swapped in after the lstat must not hang the connection.
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd
        )
        try:
            if os.fstat(fd).st_ino != st.st_ino:
                return b""  # replaced since the lstat: matches no digest
            hash_fd(hasher, fd, st.st_size)
        finally:
            os.close(fd)
        with self._lock:
            if len(self._digests) >= _DIGEST_CACHE_SIZE:
                del self._digests[next(iter(self._digests))]
            self._digests[cache_key] = hasher.digest()
        return hasher.digest()

    def open_partial(self, relpath: str, size: int, digest: bytes | None) -> PartialFile:
        """Open or resume the partial file for this offer; raises BadName or Busy.

        ``digest=None`` is for a peer that announces no digest (the prototype door): the
        partial is a fresh one of its own, never resumed, and its commit verifies nothing.
        """
        parts = self.check_name(relpath)
        key = partial_key(relpath, size, digest)
        try:
            with opened_subdir(self.incoming_dir, parts[:-1], relpath, create=False):
                pass  # refuse a symlinked directory now, not after the whole transfer
            if not self.claims.claim(key, relpath):
                raise Busy(f"{relpath!r} is being received on another connection; offer it later")
        except OSError as exc:
            raise io_error(exc, f"checking the directories of {relpath!r}") from exc
        try:
            return PartialFile(self, key, relpath, parts, size, digest)
        except OSError as exc:
            self.claims.unclaim(key)
            raise io_error(exc, f"opening the partial file for {relpath!r}") from exc
        except BaseException:
            self.claims.unclaim(key)
            raise

    def open_deferred(self, relpath: str, size: int, mtime_ns: int) -> PartialFile:
        """Open or resume the partial of a file whose digest comes after its bytes.

        Until then its version is told by size and mtime, so a sender that reconnects
        resumes the same version.  `PartialFile.expect` must name the digest before the
        commit, which otherwise fails: no real digest equals this stand-in.
        """
        stand_in = b"mtime" + mtime_ns.to_bytes(11, "big", signed=True)
        return self.open_partial(relpath, size, stand_in)

    def leftover_partials(self) -> list[LeftoverPartial]:
        """Partial files on disk, for the startup scan and logging."""
        return [leftover for _, leftover in scan_partials(self.partial_dir)]

    def remove_stale_partials(self, max_age_seconds: float) -> list[LeftoverPartial]:
        """Delete partials untouched for ``max_age_seconds`` (never ones in use); return them."""
        removed = []
        for key, leftover in scan_partials(self.partial_dir):
            if leftover.age_seconds >= max_age_seconds and self.claims.claim(key, None):
                try:
                    remove_partial(self.partial_dir, key)
                finally:
                    self.claims.unclaim(key)
                removed.append(leftover)
        return removed

    def free_bytes(self) -> int:
        """Space available to the receiver in the incoming directory."""
        return free_space(self.incoming_dir)

    def sync_sealed(self, partials: Sequence[PartialFile]) -> None:
        """Make a batch of sealed partials durable together; on failure all are dropped.

        Group commit of the bytes: on ext4 each fsync is a journal commit and a disk flush,
        so a batch of small files costs one syncfs of the filesystem instead of an fsync
        each (on an SD card a flush alone takes milliseconds).  syncfs goes through the
        partial opened first: it reports every writeback error since that open, which
        covers all the writes of the batch, since the others were opened after it.
        """
        if len(partials) == 1:
            partials[0].sync()
            return
        try:
            min(partials, key=lambda partial: partial.serial).sync_filesystem()
        except OSError as exc:
            for partial in partials:
                partial.discard()
            raise io_error(exc, f"making {len(partials)} received files durable") from exc

    def sync_placed(self, files: Sequence[StoredFile]) -> dict[str, StoreError]:
        """fsync the directories of files placed with ``sync_dir=False``, each directory once.

        Group commit: a batch of small files costs one directory fsync instead of one
        each.  Where the fsync fails, the names placed there are withdrawn, so that no
        ACK can rest on them; the failures are returned by stored path.
        """
        by_dir: dict[tuple[str, ...], list[StoredFile]] = {}
        for stored in files:
            if stored.outcome is not Outcome.DUPLICATE:
                by_dir.setdefault(tuple(stored.path.split("/")[:-1]), []).append(stored)
        failures: dict[str, StoreError] = {}
        for dirs, placed in by_dir.items():
            where = "/".join(dirs) or "."
            try:
                with opened_subdir(self.incoming_dir, dirs, where, create=False) as dir_fd:
                    if dir_fd is None:
                        raise FileNotFoundError(f"{where} vanished")
                    self._fsync_or_withdraw(dir_fd, placed)
            except (OSError, StoreError) as exc:
                error = exc if isinstance(exc, StoreError) else io_error(exc, f"syncing {where!r}")
                failures.update((stored.path, error) for stored in placed)
        return failures

    @staticmethod
    def _fsync_or_withdraw(dir_fd: int, placed: list[StoredFile]) -> None:
        try:
            os.fsync(dir_fd)
        except OSError:
            for stored in placed:
                with suppress(OSError):
                    os.unlink(stored.path.rsplit("/", 1)[-1], dir_fd=dir_fd)
            raise

    def place_partial(
        self, key: str, parts: tuple[str, ...], size: int, digest: bytes, sync_dir: bool = True
    ) -> StoredFile:
        """Give the partial `key`, verified and fsynced, its final name, never overwriting anything.

        The step of `PartialFile.place` that needs the whole store: the clash names, the
        digest cache and the lock.  Called through it, which drops the partial afterwards.
        """
        relpath = "/".join(parts)
        with opened_subdir(
            self.incoming_dir, parts[:-1], relpath, create=True, settled=self._settled
        ) as dir_fd:
            assert dir_fd is not None  # create=True never yields None
            for _ in range(_PLACE_ATTEMPTS):
                entries = clash_entries(dir_fd, parts[-1])
                stored = self._identical_in(dir_fd, parts, entries, size, digest)
                if stored is not None:
                    return stored
                name = free_name(parts, entries)
                if self._link_partial(key, dir_fd, name):
                    break
                # Another connection took `name` between our look and our link: look again.
            else:
                raise StorageIOError(
                    f"found no free name for {relpath!r} in {_PLACE_ATTEMPTS} attempts while "
                    "others kept taking them; send the file again"
                )
            try:
                if sync_dir:
                    os.fsync(dir_fd)
            except OSError:
                with suppress(OSError):  # withdraw the name so no ACK rests on a lost rename
                    os.unlink(name, dir_fd=dir_fd)
                raise
        outcome = Outcome.STORED if name == parts[-1] else Outcome.KEPT_BESIDE
        return StoredFile("/".join((*parts[:-1], name)), outcome, size)

    def _link_partial(self, key: str, dir_fd: int, name: str) -> bool:
        """Give the partial its final name; False if the name was taken meanwhile.

        After a hard link the partial's own name stays until PartialFile.discard() removes it.
        """
        part = f"{key}.part"
        with opened_dir(self.partial_dir) as part_fd:
            try:
                os.link(part, name, src_dir_fd=part_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK_ERRNOS:
                    raise
                # No hard links here, and rename() would overwrite: check first, under the lock
                # so that no other connection of this receiver can slip in between.
                with self._lock:
                    try:
                        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                        return False
                    except FileNotFoundError:
                        os.rename(part, name, src_dir_fd=part_fd, dst_dir_fd=dir_fd)
                        return True
            return True


def _make_durable(dir_fd: int, name: str) -> None:
    """fsync a stored file and its directory before a DUPLICATE answer vouches for it.

    The copy may have been placed by a receiver killed before its directory fsync,
    or put there by hand: a DUPLICATE ACK promises the same durability as STORED.
    """
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.fsync(dir_fd)
