"""CompletionWatcher: hands out each scan file once it is quiet and, for .npy, complete."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType

from watchdog.observers.api import BaseObserver

from .events import EventHandler
from .readiness import Readiness, assess
from .scan import Version, ignored, log_scan_error, matches, require_directory, walk
from .settle import Clock, SettlePolicy

log = logging.getLogger("scanxfer.watcher")

METHODS = ("auto", "inotify", "poll")
# A full rescan in inotify mode catches what inotify can lose: events dropped when the kernel
# queue overflows (watchdog 2.2 discards that signal) and files in a directory moved in from
# outside the tree, which watchdog 2.2 never adds a watch for.
DEFAULT_RESCAN_SECONDS = 60.0


class CompletionWatcher:
    """Watches ``root`` recursively and hands out each matching file once it is complete.

    A file is handed out once per `Version`; if it is modified later it becomes eligible again.
    When a candidate is judged, and what a verdict means, is the `SettlePolicy`'s business;
    judging is `readiness.assess`: no writer, a complete .npy header. This class is the I/O
    around the policy: a background thread feeds it sweeps and asks it what is due, and
    ``get()`` returns complete files oldest mtime first within each batch. Method "inotify"
    reacts to watchdog events (through the `FileEvents` methods), "poll" compares stat results,
    "auto" uses inotify on Linux if the observer starts and polls otherwise.
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
        clock: Clock = time.monotonic,
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
        # Files this user may not read: for the sender to report, from its own thread.
        self._unreadable: queue.Queue[tuple[PurePosixPath, Readiness]] = queue.Queue()
        self._policy = SettlePolicy(settle_seconds, clock, self._report_unreadable)
        self._clock = clock
        self._requested = method
        self._rescan_every = rescan_seconds
        # Wake often enough that a file is handed out soon after it settles, but never spin.
        self._tick = min(max(settle_seconds / 4, 0.01), 0.5)
        self.method: str | None = None  # "inotify" or "poll" once started
        self._ready: queue.Queue[PurePosixPath] = queue.Queue()
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
        require_directory(self._root)
        if self._requested in ("auto", "inotify"):
            self._observer = self._start_observer()
        self.method = "inotify" if self._observer is not None else "poll"
        log.info(
            "watching %s for completed files using %s (settle %.2fs)",
            self._root,
            self.method,
            self._policy.settle_seconds,
        )
        self._sweep(PurePosixPath(), complete=self.method == "poll")
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

    def unreadable(self) -> list[tuple[PurePosixPath, Readiness]]:
        """The files found unreadable since the last call, each with its verdict (once per
        version: a chmod that makes one readable makes it a candidate again)."""
        found = []
        with contextlib.suppress(queue.Empty):
            while True:
                found.append(self._unreadable.get_nowait())
        return found

    def _report_unreadable(self, rel: PurePosixPath, readiness: Readiness) -> None:
        self._unreadable.put((rel, readiness))

    def reconsider(self, relpath: PurePosixPath) -> None:
        """Judge ``relpath`` again once it has settled, even if its version was judged before.

        The sender calls this for a file it handed back: one that changed or gained a writer
        after it was handed out, or that it could not move or delete because a writer held it.
        """
        self._policy.reconsider(relpath)

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

    # -- FileEvents: called by the inotify observer's thread through events.EventHandler

    def file_active(self, path: bytes | str) -> None:
        rel = self._relative(path)
        if rel is None or not matches(rel, self._patterns, self._ignore):
            return
        try:
            version: Version | None = Version.of(os.lstat(self._root / rel))
        except OSError:
            version = None
        self._policy.touched(rel, version)

    def file_gone(self, path: bytes | str) -> None:
        rel = self._relative(path)
        if rel is not None:
            self._policy.forget(rel)

    def dir_appeared(self, path: bytes | str) -> None:
        rel = self._relative(path)
        if rel is not None and not any(ignored(part, self._ignore) for part in rel.parts):
            self._sweep(rel, complete=False)

    def dir_gone(self, path: bytes | str) -> None:
        rel = self._relative(path)
        if rel is not None:
            self._policy.forget_below(rel)

    def _relative(self, raw: bytes | str) -> PurePosixPath | None:
        try:
            rel = Path(os.fsdecode(raw)).relative_to(self._root)
        except ValueError:
            return None
        return PurePosixPath(rel.as_posix()) if rel.parts else None

    # -- observer management

    def _start_observer(self) -> BaseObserver | None:
        """Start a watchdog inotify observer, or return None (auto) / raise (inotify) on failure."""
        try:
            if not sys.platform.startswith("linux"):
                raise OSError("inotify exists only on Linux")
            # Imported here: the module fails to import on platforms without inotify.
            from watchdog.observers.inotify import InotifyObserver

            observer = InotifyObserver()
            observer.schedule(EventHandler(self), str(self._root), recursive=True)
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

    # -- background thread

    def _run(self) -> None:
        try:
            next_rescan = self._clock() + self._rescan_every
            while not self._stopping.wait(self._tick):
                if self.method == "inotify" and not self._observer_alive():
                    log.warning("inotify observer for %s stopped; polling instead", self._root)
                    self._stop_observer()
                    self.method = "poll"
                if self.method == "poll":
                    self._sweep(PurePosixPath(), complete=True)
                elif self._clock() >= next_rescan:
                    self._sweep(PurePosixPath(), complete=False)
                    next_rescan = self._clock() + self._rescan_every
                for rel in self._policy.settled(self._assess):
                    self._ready.put(rel)
        except Exception as exc:  # surfaced to the caller by get(), never lost silently
            self._failure = exc
            raise

    def _assess(self, rel: PurePosixPath) -> Readiness:
        return assess(self._root / rel)

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            failure = self._failure
            raise RuntimeError(f"watcher for {self._root} failed: {failure}") from failure

    def _report_once(self, exc: OSError) -> None:
        """Log each distinct scan error once; polling would otherwise repeat it every tick."""
        key = f"{exc.filename}: {exc.strerror}"
        if key not in self._reported_errors:
            self._reported_errors.add(key)
            log_scan_error(exc)

    def _sweep(self, start: PurePosixPath, *, complete: bool) -> None:
        """Tell the policy which files are below ``start``: all of them when polling
        (``complete``), or those an inotify rescan or a new directory may have missed."""
        if not (self._root / start).is_dir():
            if start.parts == ():
                self._report_once(FileNotFoundError(2, "scan directory missing", str(self._root)))
            return
        found = {
            rel: Version.of(st)
            for rel, st in walk(self._root, start, self._patterns, self._ignore, self._report_once)
        }
        if complete:
            self._policy.polled(found)
        else:
            self._policy.rescanned(found)
