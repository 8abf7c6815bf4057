"""CompletionWatcher: hands out each scan file once it is quiet and, for .npy, complete."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from watchdog.observers.api import BaseObserver

from .events import _EventHandler
from .readiness import Condition, assess
from .scan import (
    Version,
    _ignored,
    _log_scan_error,
    _require_directory,
    _walk,
    matches,
)

log = logging.getLogger("scanxfer.watcher")

METHODS = ("auto", "inotify", "poll")
# A full rescan in inotify mode catches what inotify can lose: events dropped when the kernel
# queue overflows (watchdog 2.2 discards that signal) and files in a directory moved in from
# outside the tree, which watchdog 2.2 never adds a watch for.
DEFAULT_RESCAN_SECONDS = 60.0
# A file some process holds open for writing is looked at again this often (or every
# settle_seconds, if longer): its writer's close may raise no event (polling, or a mapping
# released long after its descriptor was closed).
BUSY_RECHECK_SECONDS = 1.0


class CompletionWatcher:
    """Watches ``root`` recursively and hands out each matching file once it is complete.

    A file is handed out once per `Version`; if it is modified later it becomes eligible again.
    A candidate is judged once it has been quiet for ``settle_seconds``: no event for it, and
    the same version as when it was last looked at (mapped writes raise no event). Judging is
    `readiness.assess`: no writer, a complete .npy header. Candidates are tracked by a
    background thread; ``get()`` returns them oldest mtime first within each batch. Method
    "inotify" reacts to watchdog events, "poll" compares stat results, "auto" uses inotify on
    Linux if the observer starts and polls otherwise.
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
        self._due: dict[PurePosixPath, float] = {}  # candidates: when to judge them
        self._seen: dict[PurePosixPath, Version] = {}  # version at the last look
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

    def reconsider(self, relpath: PurePosixPath) -> None:
        """Judge ``relpath`` again once it has settled, even if its version was judged before.

        The sender calls this for a file it handed back: one that changed or gained a writer
        after it was handed out, or that it could not move or delete because a writer held it.
        """
        with self._lock:
            self._evaluated.pop(relpath, None)
            self._due[relpath] = time.monotonic() + self._settle

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
        if rel is None or not matches(rel, self._patterns, self._ignore):
            return
        # The version at the last event: one that differs when the file is judged was
        # changed without an event (through a memory map), so it has not been quiet.
        try:
            version: Version | None = Version.of(os.lstat(self._root / rel))
        except OSError:
            version = None
        with self._lock:
            self._due[rel] = time.monotonic() + self._settle
            if version is not None:
                self._seen[rel] = version

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
        return self._due, self._seen, self._evaluated

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
            rel: Version.of(st)
            for rel, st in _walk(self._root, start, self._patterns, self._ignore, self._report_once)
        }
        now = time.monotonic()
        with self._lock:
            for rel, version in found.items():
                changed = track_changes and self._seen.get(rel) != version
                if changed:
                    self._seen[rel] = version
                fresh = changed or rel not in self._due
                if fresh and self._evaluated.get(rel) != version:
                    self._due[rel] = now + self._settle
                    self._seen[rel] = version  # to compare with when it is judged
            if track_changes:
                for gone in self._seen.keys() - found.keys():
                    for table in self._tables():
                        table.pop(gone, None)

    def _hand_out_settled(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [rel for rel, when in self._due.items() if when <= now]
            for rel in due:
                del self._due[rel]
        ready = [item for item in map(self._judge, sorted(due)) if item is not None]
        for _, rel in sorted(ready):
            self._ready.put(rel)

    def _judge(self, rel: PurePosixPath) -> tuple[int, PurePosixPath] | None:
        """Decide whether a settled candidate is complete; returns a sort key + path if so."""
        readiness = assess(self._root / rel)
        version, condition = readiness.version, readiness.condition
        now = time.monotonic()
        with self._lock:
            if version is None:
                for table in self._tables():
                    table.pop(rel, None)
                return None
            if self._seen.get(rel, version) != version or condition is Condition.CHANGING:
                # Changed since it was last looked at, with or without an event: not quiet.
                self._seen[rel] = version
                self._due[rel] = now + self._settle
                return None
            self._seen[rel] = version
            if self._evaluated.get(rel) == version:
                return None
            if condition is Condition.WRITING:
                # Its writer's close may raise no event: look again, never hand it out now.
                self._due[rel] = now + max(self._settle, BUSY_RECHECK_SECONDS)
                log.debug("%s is %s", rel, readiness.reason)
                return None
            self._evaluated[rel] = version
        if condition is Condition.READY:
            return version.mtime_ns, rel
        if condition is Condition.UNREADABLE:
            log.warning("%s %s; it is sent once the sender may read it", rel, readiness.reason)
        else:
            log.debug("%s is %s", rel, readiness.reason)
        return None
