"""Find scan files under the watched directory and decide when each one is complete.

An instrument writes a scan under its final name while it acquires, so "the file exists" says
nothing about "the file is finished". Two independent signals must agree before a file is handed
to the sender: it has been quiet for ``settle_seconds`` (no inotify event for it, or unchanged
size and mtime when polling), and -- for ``.npy`` files -- its size is exactly what its own header
promises. The header check catches writers that pause for longer than the settle time.
"""

from __future__ import annotations

import ast
import fnmatch
import logging
import math
import os
import queue
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, BinaryIO

import watchdog.events as wd_events
from numpy.lib import format as npy_format
from watchdog.observers.api import BaseObserver

log = logging.getLogger("scanxfer.watcher")

NPY_MAGIC = b"\x93NUMPY"
# numpy refuses to parse headers longer than this (its _MAX_HEADER_SIZE); so do we, so that a
# length field read from a garbage file can never size an allocation.
MAX_NPY_HEADER = 10_000
# Header-length field per format major version: 1.0 has 2 bytes, 2.0 and 3.0 have 4 bytes.
_HEADER_LEN_FORMAT = {1: "<H", 2: "<I", 3: "<I"}
# Version 3.0 only differs from 2.0 in allowing UTF-8 field names in the header.
_HEADER_ENCODING = {1: "latin1", 2: "latin1", 3: "utf8"}

METHODS = ("auto", "inotify", "poll")
# A full rescan in inotify mode catches what inotify can lose: events dropped when the kernel
# queue overflows (watchdog 2.2 discards that signal) and files in a directory moved in from
# outside the tree, which watchdog 2.2 never adds a watch for.
DEFAULT_RESCAN_SECONDS = 60.0

Version = tuple[int, int]  # (st_size, st_mtime_ns): a file is handed out once per version
ErrorHandler = Callable[[OSError], None]


# --- .npy completeness ---------------------------------------------------------------------


def npy_expected_size(fp: BinaryIO) -> int | None:
    """Return the total size a complete .npy file must have, or None if the header is unusable.

    Reads at most MAX_NPY_HEADER + 12 bytes from the start of ``fp``. None means "cannot be
    proven complete": truncated or garbage header, unknown version, or an object dtype (such
    files are pickles, which we refuse to handle and cannot size-check).
    """
    prefix = fp.read(8)
    if len(prefix) < 8 or prefix[:6] != NPY_MAGIC:
        return None
    major, minor = prefix[6], prefix[7]
    if minor != 0 or major not in _HEADER_LEN_FORMAT:
        return None
    len_format = _HEADER_LEN_FORMAT[major]
    len_field = fp.read(struct.calcsize(len_format))
    if len(len_field) != struct.calcsize(len_format):
        return None
    (header_len,) = struct.unpack(len_format, len_field)
    if header_len > MAX_NPY_HEADER:
        return None
    header = fp.read(header_len)
    if len(header) != header_len:
        return None
    data_size = _npy_data_size(header, _HEADER_ENCODING[major])
    if data_size is None:
        return None
    return len(prefix) + len(len_field) + header_len + data_size


def _npy_data_size(header: bytes, encoding: str) -> int | None:
    """Byte count of the array data described by a header dict literal, or None if invalid."""
    try:
        fields = ast.literal_eval(header.decode(encoding))
    except (UnicodeDecodeError, ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        return None
    shape = fields["shape"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        return None
    if not isinstance(fields["fortran_order"], bool):
        return None
    try:
        dtype = npy_format.descr_to_dtype(fields["descr"])
    except (TypeError, ValueError, KeyError, OverflowError, RecursionError):
        return None
    if dtype.hasobject:
        return None
    return math.prod(shape) * dtype.itemsize


def npy_complete(path: Path) -> bool:
    """True unless ``path`` is a .npy file lacking (or exceeding) the bytes its header promises.

    Opened non-blocking so that a FIFO that happens to be named ``*.npy`` cannot hang the caller.
    """
    if path.suffix.lower() != ".npy":
        return True
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return False
    with os.fdopen(fd, "rb") as fp:
        expected = npy_expected_size(fp)
    return expected is not None and expected == st.st_size


# --- matching and scanning -----------------------------------------------------------------


def _ignored(name: str, ignore: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in ignore)


def matches(relpath: PurePosixPath, patterns: Sequence[str], ignore: Sequence[str]) -> bool:
    """True if the file name matches a pattern and no path component matches an ignore rule.

    Ignore rules apply to directories too, so ``.*`` also hides everything below ``.cache/``.
    """
    if any(_ignored(part, ignore) for part in relpath.parts):
        return False
    return any(fnmatch.fnmatch(relpath.name, pattern) for pattern in patterns)


def _log_scan_error(exc: OSError) -> None:
    log.warning("cannot read %s (%s); files below it are skipped", exc.filename, exc.strerror)


def _require_directory(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(
            f"scan directory {root} does not exist or is not a directory; "
            "create it or point the sender at the right directory"
        )


def _walk(
    root: Path,
    start: PurePosixPath,
    patterns: Sequence[str],
    ignore: Sequence[str],
    on_error: ErrorHandler,
) -> Iterator[tuple[PurePosixPath, os.stat_result]]:
    """Yield (relative path, lstat) of matching regular files below ``root / start``.

    Never follows symlinks. Entries that vanish mid-scan are skipped silently (an instrument
    may delete or rename files at any time); other errors go to ``on_error``.
    """
    pending = [start]
    while pending:
        reldir = pending.pop()
        try:
            with os.scandir(root / reldir) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            on_error(exc)
            continue
        for entry in entries:
            if _ignored(entry.name, ignore):
                continue
            rel = reldir / entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(rel)
                elif entry.is_file(follow_symlinks=False) and any(
                    fnmatch.fnmatch(entry.name, pattern) for pattern in patterns
                ):
                    yield rel, entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                on_error(exc)


def scan(
    root: Path,
    patterns: Sequence[str],
    ignore: Sequence[str],
    on_error: ErrorHandler = _log_scan_error,
) -> list[PurePosixPath]:
    """Matching regular files under ``root`` as POSIX relative paths, oldest mtime first.

    Oldest first so that a backlog is delivered in acquisition order. Raises
    FileNotFoundError if ``root`` itself is missing, because that is a configuration error,
    not an empty directory.
    """
    _require_directory(root)
    found = list(_walk(root, PurePosixPath(), patterns, ignore, on_error))
    found.sort(key=lambda item: (item[1].st_mtime_ns, str(item[0])))
    return [rel for rel, _ in found]


def _version(st: os.stat_result) -> Version:
    return st.st_size, st.st_mtime_ns


# --- the watcher -----------------------------------------------------------------------------

# Events that mean "this file is being written". Attribute events exist only in watchdog >= 3
# (2.2 reports IN_ATTRIB as a modification); they matter because copy tools set the mtime after
# the last write. Opened and closed-without-write events are deliberately absent: our own header
# check and the sender's reads produce them, and counting them would postpone a file forever.
_ACTIVITY_EVENTS: tuple[type[wd_events.FileSystemEvent], ...] = (
    wd_events.FileCreatedEvent,
    wd_events.FileModifiedEvent,
    wd_events.FileClosedEvent,
    *((wd_events.FileAttribEvent,) if hasattr(wd_events, "FileAttribEvent") else ()),
)


class _EventHandler(wd_events.FileSystemEventHandler):
    """Forwards watchdog events to the watcher.

    Overrides dispatch(), the single entry point that watchdog 2.2 and 7.x both call, because
    the on_* hooks differ between those versions.
    """

    def __init__(self, watcher: CompletionWatcher) -> None:
        super().__init__()
        self._watcher = watcher

    def dispatch(self, event: wd_events.FileSystemEvent) -> None:
        w = self._watcher
        if isinstance(event, wd_events.FileMovedEvent):
            w._file_gone(event.src_path)
            w._file_active(event.dest_path)
        elif isinstance(event, wd_events.DirMovedEvent):
            w._dir_gone(event.src_path)
            w._dir_appeared(event.dest_path)
        elif isinstance(event, _ACTIVITY_EVENTS):
            w._file_active(event.src_path)
        elif isinstance(event, wd_events.FileDeletedEvent):
            w._file_gone(event.src_path)
        elif isinstance(event, wd_events.DirDeletedEvent):
            w._dir_gone(event.src_path)
        elif isinstance(event, wd_events.DirCreatedEvent):
            w._dir_appeared(event.src_path)


class CompletionWatcher:
    """Watches ``root`` recursively and hands out each matching file once it is complete.

    A file is handed out once per (size, mtime_ns) version; if it is modified later it becomes
    eligible again. Candidates are tracked by a background thread; ``get()`` returns them oldest
    mtime first within each batch. Method "inotify" reacts to watchdog events, "poll" compares
    stat results, "auto" uses inotify on Linux if the observer starts and polls otherwise.
    """

    def __init__(
        self,
        root: Path,
        patterns: Sequence[str],
        ignore: Sequence[str],
        settle_seconds: float,
        method: str = "auto",
        *,
        rescan_seconds: float = DEFAULT_RESCAN_SECONDS,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown watch method {method!r}; use one of {', '.join(METHODS)}")
        if settle_seconds < 0 or rescan_seconds <= 0:
            raise ValueError("settle_seconds must be >= 0 and rescan_seconds > 0")
        # Resolved: inotify does not follow a symlinked root (watchdog adds IN_DONT_FOLLOW), and
        # event paths must share the root's spelling for relative_to() to work.
        self._root = Path(os.path.realpath(root))
        self._patterns = tuple(patterns)
        self._ignore = tuple(ignore)
        self._settle = settle_seconds
        self._requested = method
        self._rescan_every = rescan_seconds
        # Wake often enough that a file is handed out soon after it settles, but never spin.
        self._tick = min(max(settle_seconds / 4, 0.01), 0.5)
        self.method: str | None = None  # "inotify" or "poll" once started
        self._ready: queue.Queue[PurePosixPath] = queue.Queue()
        self._lock = threading.Lock()
        self._quiet_since: dict[PurePosixPath, float] = {}  # candidates: time of last change
        self._last_seen: dict[PurePosixPath, Version] = {}  # poll mode: version at last poll
        self._evaluated: dict[PurePosixPath, Version] = {}  # version already judged
        self._reported_errors: set[str] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: BaseObserver | None = None
        self._failure: BaseException | None = None

    # -- public API

    def start(self) -> None:
        """Start watching; files already present become candidates like new ones."""
        if self._thread is not None:
            raise RuntimeError("CompletionWatcher.start() called twice")
        _require_directory(self._root)
        if self._requested in ("auto", "inotify"):
            self._observer = self._start_observer()
        self.method = "inotify" if self._observer is not None else "poll"
        log.info(
            "watching %s for completed files using %s (settle %.2fs)",
            self._root,
            self.method,
            self._settle,
        )
        self._sweep(PurePosixPath(), track_changes=self.method == "poll")
        self._thread = threading.Thread(target=self._run, name="scanxfer-watcher", daemon=True)
        self._thread.start()

    def get(self, timeout: float) -> PurePosixPath | None:
        """Next complete file (relative POSIX path), or None if none arrived within ``timeout``."""
        if self._thread is None:
            raise RuntimeError("call CompletionWatcher.start() before get()")
        self._raise_if_failed()
        try:
            return self._ready.get(timeout=timeout)
        except queue.Empty:
            self._raise_if_failed()
            return None

    def stop(self) -> None:
        """Stop the background thread and the inotify observer; safe to call twice."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._stop_observer()

    def __enter__(self) -> CompletionWatcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observer management

    def _start_observer(self) -> BaseObserver | None:
        """Start a watchdog inotify observer, or return None (auto) / raise (inotify) on failure."""
        try:
            if not sys.platform.startswith("linux"):
                raise OSError("inotify exists only on Linux")
            # Imported here: the module fails to import on platforms without inotify.
            from watchdog.observers.inotify import InotifyObserver

            observer = InotifyObserver()
            observer.schedule(_EventHandler(self), str(self._root), recursive=True)
            observer.start()
        # watchdog raises different types per version (UnsupportedLibc vs UnsupportedLibcError,
        # OSError for watch or instance limits), so anything here means "inotify unavailable".
        except Exception as exc:
            if self._requested == "inotify":
                raise RuntimeError(
                    f"cannot watch {self._root} with inotify: {exc}; use method 'poll', or raise "
                    "fs.inotify.max_user_watches / max_user_instances if a limit was hit"
                ) from exc
            log.info("inotify unavailable for %s (%s); polling instead", self._root, exc)
            return None
        return observer

    def _observer_alive(self) -> bool:
        observer = self._observer
        assert observer is not None
        return observer.is_alive() and all(e.is_alive() for e in observer.emitters)

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        observer.stop()
        observer.join(timeout=5)

    # -- event callbacks (observer thread)

    def _relative(self, raw: bytes | str) -> PurePosixPath | None:
        try:
            rel = Path(os.fsdecode(raw)).relative_to(self._root)
        except ValueError:
            return None
        return PurePosixPath(rel.as_posix()) if rel.parts else None

    def _file_active(self, raw: bytes | str) -> None:
        rel = self._relative(raw)
        if rel is not None and matches(rel, self._patterns, self._ignore):
            with self._lock:
                self._quiet_since[rel] = time.monotonic()

    def _dir_appeared(self, raw: bytes | str) -> None:
        """A directory was created or moved in: its files may predate our watch on it."""
        rel = self._relative(raw)
        if rel is not None and not any(_ignored(part, self._ignore) for part in rel.parts):
            self._sweep(rel, track_changes=False)

    def _file_gone(self, raw: bytes | str) -> None:
        """Forget a deleted or moved-away file, so the bookkeeping does not grow forever."""
        rel = self._relative(raw)
        if rel is not None:
            with self._lock:
                for table in self._tables():
                    table.pop(rel, None)

    def _dir_gone(self, raw: bytes | str) -> None:
        rel = self._relative(raw)
        if rel is not None:
            with self._lock:
                for table in self._tables():
                    for known in [k for k in table if rel in k.parents]:
                        del table[known]

    def _tables(self) -> tuple[dict[PurePosixPath, Any], ...]:
        return self._quiet_since, self._last_seen, self._evaluated

    # -- background thread

    def _run(self) -> None:
        try:
            next_rescan = time.monotonic() + self._rescan_every
            while not self._stopping.wait(self._tick):
                if self.method == "inotify" and not self._observer_alive():
                    log.warning("inotify observer for %s stopped; polling instead", self._root)
                    self._stop_observer()
                    self.method = "poll"
                if self.method == "poll":
                    self._sweep(PurePosixPath(), track_changes=True)
                elif time.monotonic() >= next_rescan:
                    self._sweep(PurePosixPath(), track_changes=False)
                    next_rescan = time.monotonic() + self._rescan_every
                self._hand_out_settled()
        except Exception as exc:  # surfaced to the caller by get(), never lost silently
            self._failure = exc
            raise

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            failure = self._failure
            raise RuntimeError(f"watcher for {self._root} failed: {failure}") from failure

    def _report_once(self, exc: OSError) -> None:
        """Log each distinct scan error once; polling would otherwise repeat it every tick."""
        key = f"{exc.filename}: {exc.strerror}"
        if key not in self._reported_errors:
            self._reported_errors.add(key)
            _log_scan_error(exc)

    def _sweep(self, start: PurePosixPath, *, track_changes: bool) -> None:
        """Make files below ``start`` candidates unless their current version was judged already.

        With ``track_changes`` (poll mode) a version change restarts the file's quiet period and
        files no longer present are forgotten; without it (inotify safety rescan) pending
        candidates keep their timers, so a rescan never postpones a file.
        """
        if not (self._root / start).is_dir():
            if start.parts == ():
                self._report_once(FileNotFoundError(2, "scan directory missing", str(self._root)))
            return
        found = {
            rel: _version(st)
            for rel, st in _walk(self._root, start, self._patterns, self._ignore, self._report_once)
        }
        now = time.monotonic()
        with self._lock:
            for rel, version in found.items():
                restart = track_changes and self._last_seen.get(rel) != version
                if restart:
                    self._last_seen[rel] = version
                fresh = restart or rel not in self._quiet_since
                if fresh and self._evaluated.get(rel) != version:
                    self._quiet_since[rel] = now
            if track_changes:
                for gone in self._last_seen.keys() - found.keys():
                    self._last_seen.pop(gone, None)
                    self._quiet_since.pop(gone, None)
                    self._evaluated.pop(gone, None)

    def _hand_out_settled(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [rel for rel, t in self._quiet_since.items() if now - t >= self._settle]
            for rel in due:
                del self._quiet_since[rel]
        ready = [item for item in map(self._judge, sorted(due)) if item is not None]
        for _, rel in sorted(ready):
            self._ready.put(rel)

    def _judge(self, rel: PurePosixPath) -> tuple[int, PurePosixPath] | None:
        """Decide whether a settled candidate is complete; returns a sort key + path if so."""
        path = self._root / rel
        before = self._lstat_regular(path)
        if before is None:
            return None
        version = _version(before)
        with self._lock:
            if self.method == "poll" and self._last_seen.get(rel) != version:
                # Changed since the last poll: not quiet after all.
                self._last_seen[rel] = version
                self._quiet_since[rel] = time.monotonic()
                return None
            if self._evaluated.get(rel) == version:
                return None
        complete = npy_complete(path)
        after = self._lstat_regular(path)
        with self._lock:
            if after is None or _version(after) != version:
                self._quiet_since[rel] = time.monotonic()
                return None
            self._evaluated[rel] = version
        if not complete:
            log.debug("%s is not a complete .npy file yet (size %d)", rel, version[0])
            return None
        return before.st_mtime_ns, rel

    @staticmethod
    def _lstat_regular(path: Path) -> os.stat_result | None:
        try:
            st = path.lstat()
        except OSError:
            return None
        return st if stat.S_ISREG(st.st_mode) else None
