"""The receiver's durable storage: partial files, fsync, no-overwrite placement, name checks.

No sockets and no wire format here. One `Store` is shared by all connection threads; each file
being received is a `PartialFile` used by one thread.

Durability. Bytes go into ``<partial_dir>/<key>.part``, where ``key`` identifies *path + size +
digest*, so a sender that reconnects resumes the bytes already held. A ``<key>.meta`` JSON sidecar
records which file a partial belongs to. On commit the whole-file xxh3-128 digest is checked, the
file is fsynced, hard-linked (renamed, where the filesystem has no hard links) to its final name,
and the destination directory is fsynced. A crash never leaves a partial file under a final name,
and a stored file is never overwritten.

Name clashes. If the final name is free the file is stored there (``stored``). If anything is
there (a file, a directory, or a symlink, which is never followed):

* an identical file (same size and xxh3-128 digest) at the name or at one of its clash names means
  nothing new is stored (``duplicate``);
* otherwise the file is kept beside, under the first free clash name ``stem~N.suffix``
  (N = 1, 2, ...; only the last suffix counts): ``scan.npy`` -> ``scan~1.npy``, ``a.tar.gz`` ->
  ``a.tar~1.gz``, ``README`` -> ``README~1`` (``kept_beside``).

Everything under the incoming directory is reached through directory file descriptors opened with
``O_NOFOLLOW``, so a symlink planted there can never make the receiver write outside it.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import xxhash

_CHUNK = 1 << 20
_NAME_MAX = 255
_DIGEST_CACHE_SIZE = 4096
_PLACE_ATTEMPTS = 100
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_NO_HARDLINK_ERRNOS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")


class StoreError(Exception):
    """Base class; ``str(e)`` is a user-facing message that says what to do."""


class StoreSetupError(StoreError):
    """The configured directories cannot be used."""


class BadName(StoreError):
    """The offered relative path is not acceptable."""


class Busy(StoreError):
    """The same file is being received on another connection right now."""


class NoSpace(StoreError):
    """The disk (or quota) is full."""


class StorageIOError(StoreError):
    """Any other OS error while writing, fsyncing or placing a file."""


class DigestMismatch(StoreError):
    """The bytes received do not have the digest the sender announced."""


@dataclass(frozen=True)
class StoreLimits:
    max_path_length: int  # UTF-8 bytes of the whole relative path
    max_path_depth: int  # number of components


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    KEPT_BESIDE = "kept_beside"


@dataclass(frozen=True)
class StoredFile:
    path: str  # posix, relative to the incoming directory, as actually stored
    outcome: Outcome
    size: int


@dataclass(frozen=True)
class LeftoverPartial:
    path: str  # "" (and size -1) when the sidecar is missing or unreadable
    size: int
    held: int
    age_seconds: float


def _io_error(exc: OSError, action: str) -> StoreError:
    """Translate an OSError into the StoreError the receiver reports to the sender."""
    if exc.errno in _FULL_ERRNOS:
        return NoSpace(f"no space left on the receiver while {action}; free some space there")
    return StorageIOError(
        f"I/O error on the receiver while {action}: {exc}; "
        "check its disk (journalctl -k shows kernel I/O errors)"
    )


def _partial_key(relpath: str, size: int, digest: bytes) -> str:
    """Name a partial by what it will become; JSON keeps the fields unambiguous."""
    ident = json.dumps([relpath, size, digest.hex()], ensure_ascii=False)
    return xxhash.xxh3_128_hexdigest(ident.encode("utf-8"))


def _clash_name(name: str, n: int) -> str:
    pure = PurePosixPath(name)
    return f"{pure.stem}~{n}{pure.suffix}"


def _hash_fd(hasher: xxhash.xxh3_128, fd: int, length: int) -> int:
    """Feed up to ``length`` bytes of ``fd`` into ``hasher`` in 1 MiB reads; return bytes fed."""
    done = 0
    while done < length:
        chunk = os.pread(fd, min(_CHUNK, length - done), done)
        if not chunk:
            break
        hasher.update(chunk)
        done += len(chunk)
    return done


def _open_subdir(parent_fd: int, name: str, relpath: str) -> int | None:
    """Open a subdirectory without following a symlink; None if it does not exist."""
    try:
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
        raise BadName(
            f"cannot store {relpath!r}: {name!r} on the receiver is a "
            f"{'symlink' if stat.S_ISLNK(mode) else 'file'}, not a directory; "
            "rename the file on the sender or remove that entry on the receiver"
        ) from exc


@contextmanager
def _opened_dir(path: Path) -> Iterator[int]:
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


class Store:
    """Durable storage for received files; safe to share between threads."""

    def __init__(self, incoming_dir: Path, partial_dir: Path, limits: StoreLimits) -> None:
        self.incoming_dir = Path(incoming_dir)
        self.partial_dir = Path(partial_dir)
        self.limits = limits
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._digests: dict[tuple[str, int, int, int], bytes] = {}
        try:
            self.incoming_dir.mkdir(parents=True, exist_ok=True)
            self.partial_dir.mkdir(parents=True, exist_ok=True)
            same_fs = self.incoming_dir.stat().st_dev == self.partial_dir.stat().st_dev
        except OSError as exc:
            raise StoreSetupError(
                f"cannot use the storage directories: {exc}; fix the path or its permissions"
            ) from exc
        if not same_fs:
            raise StoreSetupError(
                f"partial_dir {str(partial_dir)!r} is not on the same filesystem as incoming_dir "
                f"{str(incoming_dir)!r}, so files cannot be moved into place atomically; "
                "set partial_dir to a directory on the incoming_dir filesystem"
            )

    def check_name(self, relpath: str) -> tuple[str, ...]:
        """Validate an offered relative path and return its components, or raise BadName."""
        problem = self._name_problem(relpath)
        if problem:
            raise BadName(f"refused the path {relpath!r}: {problem}; rename it on the sender")
        return tuple(relpath.split("/"))

    def _name_problem(self, relpath: str) -> str | None:
        if not isinstance(relpath, str) or not relpath:
            return "it is empty"
        try:
            nbytes = len(relpath.encode("utf-8"))
        except UnicodeEncodeError:
            return "it is not valid UTF-8"
        bad = _CONTROL_CHARS.search(relpath)
        if bad:
            return f"it contains the control character U+{ord(bad.group()):04X}"
        if "\\" in relpath:
            return "it contains a backslash (paths must be '/'-separated)"
        if relpath.startswith("/"):
            return "it is absolute (paths must be relative)"
        if nbytes > self.limits.max_path_length:
            return f"it is {nbytes} UTF-8 bytes long, more than {self.limits.max_path_length}"
        parts = relpath.split("/")
        if len(parts) > self.limits.max_path_depth:
            return f"it has {len(parts)} components, more than {self.limits.max_path_depth}"
        if "" in parts:
            return "it has an empty component ('//' or a trailing '/')"
        if "." in parts or ".." in parts:
            return "it has a '.' or '..' component"
        if any(len(part.encode("utf-8")) > _NAME_MAX for part in parts):
            return f"a component is longer than {_NAME_MAX} UTF-8 bytes"
        return None

    @contextmanager
    def _dir_fd(self, dirs: tuple[str, ...], relpath: str, create: bool) -> Iterator[int | None]:
        """Yield an fd of incoming/``dirs`` (None if missing and not ``create``)."""
        fd = os.open(self.incoming_dir, _DIR_FLAGS)
        try:
            for name in dirs:
                child = _open_subdir(fd, name, relpath)
                if child is None and create:
                    child = self._make_subdir(fd, name, relpath)
                os.close(fd)
                fd = -1 if child is None else child
                if fd < 0:
                    break
            yield fd if fd >= 0 else None
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _make_subdir(parent_fd: int, name: str, relpath: str) -> int:
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        except FileExistsError:
            pass  # another connection made it first; open it below, still without following
        else:
            os.fsync(parent_fd)
        fd = _open_subdir(parent_fd, name, relpath)
        if fd is None:
            raise OSError(errno.ENOENT, f"directory {name!r} vanished while being created")
        return fd

    def find_identical(self, relpath: str, size: int, digest: bytes) -> StoredFile | None:
        """Return the stored file identical to this offer (as DUPLICATE), if there is one.

        Only when ``relpath`` itself exists, as commit stores into a free name without looking
        further. Raises BadName for an invalid name or a symlinked directory.
        """
        parts = self.check_name(relpath)
        try:
            with self._dir_fd(parts[:-1], relpath, create=False) as dir_fd:
                if dir_fd is None:
                    return None
                entries = self._clash_entries(dir_fd, parts[-1])
                return self._identical_in(dir_fd, parts, entries, size, digest)
        except OSError as exc:
            raise _io_error(exc, f"looking for a stored copy of {relpath!r}") from exc

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
                    return StoredFile(path, Outcome.DUPLICATE, size)
        return None

    @staticmethod
    def _clash_entries(dir_fd: int, name: str) -> dict[str, os.stat_result]:
        """lstat of ``name`` then its clash names by N; empty if ``name`` is free."""
        try:
            entries = {name: os.stat(name, dir_fd=dir_fd, follow_symlinks=False)}
        except FileNotFoundError:
            return {}
        pure = PurePosixPath(name)
        pattern = re.compile(re.escape(pure.stem) + "~([1-9][0-9]*)" + re.escape(pure.suffix))
        found = []
        with os.scandir(dir_fd) as it:
            for entry in it:
                match = pattern.fullmatch(entry.name)
                if match:
                    with suppress(FileNotFoundError):
                        found.append((int(match[1]), entry.name, entry.stat(follow_symlinks=False)))
        entries.update((clash, st) for _, clash, st in sorted(found, key=lambda f: f[0]))
        return entries

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
            _hash_fd(hasher, fd, st.st_size)
        finally:
            os.close(fd)
        with self._lock:
            if len(self._digests) >= _DIGEST_CACHE_SIZE:
                del self._digests[next(iter(self._digests))]
            self._digests[cache_key] = hasher.digest()
        return hasher.digest()

    def open_partial(self, relpath: str, size: int, digest: bytes) -> PartialFile:
        """Open or resume the partial file for this offer; raises BadName or Busy."""
        parts = self.check_name(relpath)
        key = _partial_key(relpath, size, digest)
        try:
            with self._dir_fd(parts[:-1], relpath, create=False):
                pass  # refuse a symlinked directory now, not after the whole transfer
            if not self._claim(key):
                raise Busy(f"{relpath!r} is being received on another connection; offer it later")
        except OSError as exc:
            raise _io_error(exc, f"checking the directories of {relpath!r}") from exc
        try:
            return PartialFile(self, key, relpath, parts, size, digest)
        except OSError as exc:
            self._unclaim(key)
            raise _io_error(exc, f"opening the partial file for {relpath!r}") from exc
        except BaseException:
            self._unclaim(key)
            raise

    def _claim(self, key: str) -> bool:
        with self._lock:
            if key in self._busy:
                return False
            self._busy.add(key)
            return True

    def _unclaim(self, key: str) -> None:
        with self._lock:
            self._busy.discard(key)

    def _write_meta(self, key: str, relpath: str, size: int, digest: bytes) -> None:
        """Write the sidecar atomically so a leftover scan never reads half of one."""
        created = datetime.now(UTC).isoformat(timespec="seconds")
        meta = {"path": relpath, "size": size, "digest": digest.hex(), "created": created}
        tmp = self.partial_dir / f"{key}.meta.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.partial_dir / f"{key}.meta")

    def _remove_partial(self, key: str) -> None:
        """Best effort: remove a partial and its sidecars, then make that durable."""
        for suffix in (".part", ".meta", ".meta.tmp"):
            with suppress(OSError):
                os.unlink(self.partial_dir / f"{key}{suffix}")
        with suppress(OSError), _opened_dir(self.partial_dir) as fd:
            os.fsync(fd)

    def _scan_partials(self) -> list[tuple[str, LeftoverPartial]]:
        """Group the partial directory by key; a sidecar without its .part counts as held=0."""
        parts: dict[str, os.stat_result] = {}
        sidecars: dict[str, float] = {}
        with os.scandir(self.partial_dir) as it:
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
            path, size = self._read_meta(key)
            leftovers.append((key, LeftoverPartial(path, size, held, max(0.0, now - mtime))))
        return sorted(leftovers, key=lambda kl: (kl[1].path, kl[0]))

    def _read_meta(self, key: str) -> tuple[str, int]:
        try:
            meta = json.loads((self.partial_dir / f"{key}.meta").read_text("utf-8"))
            return str(meta["path"]), int(meta["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return "", -1

    def leftover_partials(self) -> list[LeftoverPartial]:
        """Partial files on disk, for the startup scan and logging."""
        return [leftover for _, leftover in self._scan_partials()]

    def remove_stale_partials(self, max_age_seconds: float) -> list[LeftoverPartial]:
        """Delete partials untouched for ``max_age_seconds`` (never ones in use); return them."""
        removed = []
        for key, leftover in self._scan_partials():
            if leftover.age_seconds >= max_age_seconds and self._claim(key):
                try:
                    self._remove_partial(key)
                finally:
                    self._unclaim(key)
                removed.append(leftover)
        return removed

    def free_bytes(self) -> int:
        """Space available to the receiver in the incoming directory."""
        st = os.statvfs(self.incoming_dir)
        return st.f_bavail * st.f_frsize

    def _place(self, key: str, parts: tuple[str, ...], size: int, digest: bytes) -> StoredFile:
        """Move a verified, fsynced partial to its final name, never overwriting anything."""
        relpath = "/".join(parts)
        with self._dir_fd(parts[:-1], relpath, create=True) as dir_fd:
            assert dir_fd is not None  # create=True never yields None
            for _ in range(_PLACE_ATTEMPTS):
                entries = self._clash_entries(dir_fd, parts[-1])
                stored = self._identical_in(dir_fd, parts, entries, size, digest)
                if stored is not None:
                    return stored
                name = self._free_name(parts, entries)
                if self._link_partial(key, dir_fd, name):
                    break
                # Another connection took `name` between our look and our link: look again.
            else:
                raise StorageIOError(
                    f"found no free name for {relpath!r} in {_PLACE_ATTEMPTS} attempts while "
                    "others kept taking them; send the file again"
                )
            try:
                os.fsync(dir_fd)
            except OSError:
                with suppress(OSError):  # withdraw the name so no ACK rests on a lost rename
                    os.unlink(name, dir_fd=dir_fd)
                raise
        outcome = Outcome.STORED if name == parts[-1] else Outcome.KEPT_BESIDE
        return StoredFile("/".join((*parts[:-1], name)), outcome, size)

    @staticmethod
    def _free_name(parts: tuple[str, ...], entries: dict[str, os.stat_result]) -> str:
        if not entries:
            return parts[-1]
        free = (_clash_name(parts[-1], n) for n in range(1, len(entries) + 1))
        name = next(clash for clash in free if clash not in entries)
        if len(name.encode("utf-8")) > _NAME_MAX:
            raise BadName(
                f"{'/'.join(parts)!r} exists with other content and its name is too long to keep "
                "the new file beside it; rename the file on the sender"
            )
        return name

    def _link_partial(self, key: str, dir_fd: int, name: str) -> bool:
        """Give the partial its final name; False if the name was taken meanwhile.

        After a hard link the partial's own name stays until PartialFile.discard() removes it.
        """
        part = f"{key}.part"
        with _opened_dir(self.partial_dir) as part_fd:
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


class PartialFile:
    """One file being received, used by one connection thread.

    ``offset`` is the number of bytes held: the point to resume from.
    """

    def __init__(
        self, store: Store, key: str, relpath: str, parts: tuple[str, ...], size: int, digest: bytes
    ) -> None:
        self._store, self._key, self._relpath, self._parts = store, key, relpath, parts
        self._size, self._digest = size, digest
        self._hasher = xxhash.xxh3_128()
        if not (store.partial_dir / f"{key}.meta").exists():
            store._write_meta(key, relpath, size, digest)
        fd = os.open(
            store.partial_dir / f"{key}.part", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            held = os.fstat(fd).st_size
            if held > size:
                os.ftruncate(fd, 0)  # not this file's bytes after all: start over
                held = 0
            self.offset = _hash_fd(self._hasher, fd, held)
            os.lseek(fd, self.offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

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
            raise _io_error(exc, f"writing {self._relpath!r}") from exc
        self._hasher.update(view)
        self.offset += len(view)

    def commit(self, mtime_ns: int) -> StoredFile:
        """Verify, fsync and place the file under its final (or a clash) name."""
        fd = self._require_fd()
        if self.offset != self._size:
            raise StoreError(f"only {self.offset} of {self._size} bytes of {self._relpath!r} held")
        if self._hasher.digest() != self._digest:
            self.discard()
            raise DigestMismatch(
                f"the bytes received for {self._relpath!r} do not match the sender's digest; "
                "the partial was dropped, send the file again"
            )
        try:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.fsync(fd)
            stored = self._store._place(self._key, self._parts, self._size, self._digest)
        except OSError as exc:
            raise _io_error(exc, f"storing {self._relpath!r}") from exc
        finally:
            self.discard()  # after success only the sidecar (or a duplicate's bytes) is left
        return stored

    def release(self) -> None:
        """Keep the bytes on disk for a later resume; close and let others open this file."""
        if self._close_fd():
            self._store._unclaim(self._key)

    def discard(self) -> None:
        """Delete the partial and its sidecar; close and let others open this file."""
        if self._close_fd():
            try:
                self._store._remove_partial(self._key)
            finally:
                # Only now: a new open of this key must not find files we are deleting.
                self._store._unclaim(self._key)

    def _close_fd(self) -> bool:
        """Close once; True if this call did the closing (so the key is still ours)."""
        if self._fd is None:
            return False
        fd, self._fd = self._fd, None
        with suppress(OSError):
            os.close(fd)
        return True
