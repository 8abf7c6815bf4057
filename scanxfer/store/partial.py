"""The partial area: files still arriving, their sidecars, and what earlier runs left behind.

Bytes go into ``<partial_dir>/<key>.part``, where ``key`` identifies *path + size + digest*, so a
sender that reconnects resumes the bytes already held. A ``<key>.meta`` JSON sidecar records which
file a partial belongs to, for the startup scan, the stale-partial cleanup and the index of idle
partials by path (see `claims`). A small file is written before a sidecar would pay off, so it
gets one only if its transfer is interrupted.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from .errors import DigestMismatch, StoreError, io_error

if TYPE_CHECKING:
    from . import Store, StoredFile

_CHUNK = 1 << 20


@dataclass(frozen=True)
class LeftoverPartial:
    path: str  # "" (and size -1) when the sidecar is missing or unreadable
    size: int
    held: int
    age_seconds: float


# Files smaller than this get their sidecar only when interrupted: most arrive in one piece,
# and for them writing and deleting the sidecar was a fifth of the receiver's work.
SIDECAR_MIN_SIZE = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)  # for syncfs, which the os module lacks
# Written bytes are handed to the disk every this many bytes (see PartialFile._write_back).
WRITE_BACK_STEP = 1 << 24


def partial_key(relpath: str, size: int, digest: bytes | None) -> str:
    """Name a partial by what it will become; JSON keeps the fields unambiguous.

    Without a digest nothing identifies the content, so a resume could splice two different
    files: such a partial gets a random key, which nothing will ever open again.
    """
    if digest is None:
        return secrets.token_hex(16)
    ident = json.dumps([relpath, size, digest.hex()], ensure_ascii=False)
    return xxhash.xxh3_128_hexdigest(ident.encode("utf-8"))


def hash_fd(hasher: xxhash.xxh3_128, fd: int, length: int) -> int:
    """Feed up to ``length`` bytes of ``fd`` into ``hasher`` in 1 MiB reads; return bytes fed."""
    done = 0
    while done < length:
        chunk = os.pread(fd, min(_CHUNK, length - done), done)
        if not chunk:
            break
        hasher.update(chunk)
        done += len(chunk)
    return done


def write_meta(partial_dir: Path, key: str, relpath: str, size: int, digest: bytes | None) -> None:
    """Write the sidecar atomically so a leftover scan never reads half of one.

    Not fsynced: it only names a partial, and a power cut that loses it loses
    nothing else: the partial still resumes by its key, and one that never does
    goes at partial_max_age.  Skipping the fsync halves the cost of storing a
    small file.
    """
    created = datetime.now(UTC).isoformat(timespec="seconds")
    hexdigest = None if digest is None else digest.hex()
    meta = {"path": relpath, "size": size, "digest": hexdigest, "created": created}
    tmp = partial_dir / f"{key}.meta.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    finally:
        os.close(fd)
    os.rename(tmp, partial_dir / f"{key}.meta")


def remove_partial(partial_dir: Path, key: str, sidecar: bool = True) -> None:
    """Best effort: remove a partial and its sidecars.

    Not made durable with a directory fsync: a partial that reappears after a
    power cut is harmless (it resumes as complete, and the commit finds the
    stored file identical and drops it again).
    """
    for suffix in (".part", ".meta", ".meta.tmp") if sidecar else (".part",):
        with suppress(OSError):
            os.unlink(partial_dir / f"{key}{suffix}")


def scan_partials(partial_dir: Path) -> list[tuple[str, LeftoverPartial]]:
    """Group the partial directory by key; a sidecar without its .part counts as held=0."""
    parts: dict[str, os.stat_result] = {}
    sidecars: dict[str, float] = {}
    with os.scandir(partial_dir) as it:
        for entry in it:
            key, _, suffix = entry.name.partition(".")
            if not entry.is_file(follow_symlinks=False):
                continue
            with suppress(FileNotFoundError):  # a commit may remove it under our feet
                if suffix == "part":
                    parts[key] = entry.stat(follow_symlinks=False)
                elif suffix in ("meta", "meta.tmp"):
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                    sidecars[key] = max(sidecars.get(key, 0.0), mtime)
    now = time.time()
    leftovers = []
    for key in parts.keys() | sidecars.keys():
        st = parts.get(key)
        held, mtime = (st.st_size, st.st_mtime) if st else (0, sidecars[key])
        path, size = _read_meta(partial_dir, key)
        leftovers.append((key, LeftoverPartial(path, size, held, max(0.0, now - mtime))))
    return sorted(leftovers, key=lambda kl: (kl[1].path, kl[0]))


def _read_meta(partial_dir: Path, key: str) -> tuple[str, int]:
    try:
        meta = json.loads((partial_dir / f"{key}.meta").read_text("utf-8"))
        return str(meta["path"]), int(meta["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return "", -1


class PartialFile:
    """One file being received, used by one connection thread.

    ``offset`` is the number of bytes held: the point to resume from.  A ``digest`` of None
    means the peer announced none (the prototype door): commit then checks nothing.
    """

    def __init__(
        self,
        store: Store,
        key: str,
        relpath: str,
        parts: tuple[str, ...],
        size: int,
        digest: bytes | None,
    ) -> None:
        self._store, self._key, self._relpath, self._parts = store, key, relpath, parts
        self._size, self._digest = size, digest
        self._hasher = xxhash.xxh3_128()
        self._named = (store.partial_dir / f"{key}.meta").exists()
        if size >= SIDECAR_MIN_SIZE:
            self._name_it()
        fd = os.open(
            store.partial_dir / f"{key}.part", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            held = os.fstat(fd).st_size
            if held > size:
                os.ftruncate(fd, 0)  # not this file's bytes after all: start over
                held = 0
            self.offset = hash_fd(self._hasher, fd, held)
            os.lseek(fd, self.offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self.serial = next(store.opened)  # which of a batch was opened first
        self._written_back = self.offset

    @property
    def path(self) -> str:
        """The final path this partial is for, relative to the incoming directory."""
        return self._relpath

    def _require_fd(self) -> int:
        if self._fd is None:
            raise StoreError(f"the partial file for {self._relpath!r} is already closed")
        return self._fd

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` at ``offset``; on failure the partial is dropped, never retried."""
        fd = self._require_fd()
        view = memoryview(data).cast("B")
        if self.offset + len(view) > self._size:
            self.discard()
            raise StoreError(
                f"more bytes than the {self._size} declared for {self._relpath!r}; "
                "the partial was dropped, send the file again"
            )
        try:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        except OSError as exc:
            self.discard()
            raise io_error(exc, f"writing {self._relpath!r}") from exc
        self._hasher.update(view)
        self.offset += len(view)
        if self.offset - self._written_back >= WRITE_BACK_STEP:
            self._write_back(fd)

    def _write_back(self, fd: int) -> None:
        """Start writing the last step's bytes to disk now, and drop the step before from the cache.

        Left to the end, the fsync of a big scan waits for all of it while the link stands
        idle; started early, the disk works while the next bytes arrive.
        The fsync at commit still decides durability.  POSIX_FADV_DONTNEED starts writeback
        of the dirty pages in its range without waiting (Python has no sync_file_range) and
        drops the clean ones: the step before, on disk by then, leaves the page cache.  So a
        scan of any size holds about two steps of cache, and does not push out everything
        else on a Pi; the next step reuses the pages just freed.  Keeping them instead slowed
        the copy into the page cache, which then had to take pages long untouched.
        """
        start = max(0, self._written_back - WRITE_BACK_STEP)
        with suppress(OSError):  # advice only: refused, the fsync at commit does it all
            os.posix_fadvise(fd, start, self.offset - start, os.POSIX_FADV_DONTNEED)
        self._written_back = self.offset

    def expect(self, digest: bytes) -> None:
        """The digest to check at commit, when it was not known at open (a deferred digest)."""
        self._digest = digest

    def commit(self, mtime_ns: int, sync_dir: bool = True) -> StoredFile:
        """Verify, fsync and place the file under its final (or a clash) name.

        With ``sync_dir=False`` the directory fsync is left to ``Store.sync_placed``,
        which does it once for a batch of files: the caller must not acknowledge
        the file before that.  For a batch, `seal`, `Store.sync_sealed` and `place`
        do the same in three steps.
        """
        self.seal(mtime_ns)
        self.sync()
        return self.place(sync_dir)

    def seal(self, mtime_ns: int) -> None:
        """Check that every byte is in and has the sender's digest; stamp the mtime."""
        fd = self._require_fd()
        if self.offset != self._size:
            raise StoreError(f"only {self.offset} of {self._size} bytes of {self._relpath!r} held")
        if self._digest is not None and self._hasher.digest() != self._digest:
            self.discard()
            raise DigestMismatch(
                f"the bytes received for {self._relpath!r} do not match the sender's digest; "
                "the partial was dropped, send the file again"
            )
        try:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        except OSError as exc:
            self.discard()
            raise io_error(exc, f"storing {self._relpath!r}") from exc

    def sync(self) -> None:
        """fsync the sealed file; on failure it is dropped, never synced again."""
        try:
            os.fsync(self._require_fd())
        except OSError as exc:
            self.discard()
            raise io_error(exc, f"storing {self._relpath!r}") from exc

    def sync_filesystem(self) -> None:
        """syncfs(2) through this file: everything written to its filesystem reaches the disk.

        Errors come back for any write since this file was opened (Linux >= 5.8 reports
        writeback errors to syncfs), so the partial opened first in a batch speaks for all.
        """
        if _libc.syncfs(self._require_fd()) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    def place(self, sync_dir: bool = True) -> StoredFile:
        """Give a sealed file, made durable by now, its final (or a clash) name."""
        try:
            return self._store.place_partial(
                self._key, self._parts, self._size, self._hasher.digest(), sync_dir
            )
        except OSError as exc:
            raise io_error(exc, f"storing {self._relpath!r}") from exc
        finally:
            self.discard()  # after success only the sidecar (or a duplicate's bytes) is left

    def _name_it(self) -> None:
        if not self._named:
            write_meta(self._store.partial_dir, self._key, self._relpath, self._size, self._digest)
            self._named = True

    def release(self) -> bool:
        """Keep the bytes on disk for a later resume; close and let others open this file.

        Returns False only if they were dropped instead, because another version of this
        path was opened meanwhile (see `claims`): these bytes could never resume.
        """
        if not self._close_fd():
            return True
        claims = self._store.claims
        try:
            # Named before it is idle: the sidecar is how the next start finds its path.
            with suppress(OSError):  # the bytes resume without it
                self._name_it()
        finally:
            kept = claims.release(self._key)
            if not kept:
                try:
                    remove_partial(self._store.partial_dir, self._key)
                finally:
                    claims.unclaim(self._key)
        return kept

    def drop_older_versions(self) -> int:
        """Remove the idle partials of other versions of this path; return how many there were.

        A sender only ever offers the current version of a path, so none of them can resume:
        they are what connections that ended mid-payload left behind.  Those still held by a
        connection go when it releases them.
        """
        claims = self._store.claims
        keys = claims.supersede(self._relpath, self._key)
        for key in keys:
            try:
                remove_partial(self._store.partial_dir, key)
            finally:
                claims.unclaim(key)
        return len(keys)

    def discard(self) -> None:
        """Delete the partial and its sidecar; close and let others open this file."""
        if self._close_fd():
            try:
                remove_partial(self._store.partial_dir, self._key, sidecar=self._named)
            finally:
                # Only now: a new open of this key must not find files we are deleting.
                self._store.claims.unclaim(self._key)

    def _close_fd(self) -> bool:
        """Close once; True if this call did the closing (so the key is still ours)."""
        if self._fd is None:
            return False
        fd, self._fd = self._fd, None
        with suppress(OSError):
            os.close(fd)
        return True
