"""Which partials are in use, and which idle ones each final path has left behind.

A connection claims a partial's key while it receives into it, so that no other connection
opens the same file.  Released, the partial is *idle*: it waits on disk for its sender to
resume it.  But a sender only ever offers the current version of a path, so once a partial
of another version of that path is opened, the older partial can never resume.  It is
dropped then if it is idle, or else when its connection lets go of it (see
`PartialFile.drop_older_versions` and `PartialFile.release`), instead of lingering until
partial_max_age.  That connection may be one that has not noticed yet that its sender is
gone.  The partials are indexed by final path for this, so an offer of a path with no other
version about costs one dict lookup.

A partial whose path is unknown (a small file cut off by a crash has no sidecar naming it)
is not indexed: only partial_max_age removes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Claims:
    """Claimed keys and the index of partials by path; safe to share between threads."""

    def __init__(self, idle: Iterable[tuple[str, str]]) -> None:
        """`idle`: (key, final path) of the partials on disk, none of them claimed yet."""
        self._lock = threading.Lock()
        # key -> the final path it is being received for; None while it is being removed.
        self._claimed: dict[str, str | None] = {}
        self._idle: dict[str, str] = {}  # key -> final path
        self._by_path: dict[str, set[str]] = {}  # final path -> keys, idle or being received
        self._superseded: set[str] = set()  # keys being received, to drop when released
        for key, relpath in idle:
            self._idle[key] = relpath
            self._by_path.setdefault(relpath, set()).add(key)

    def claim(self, key: str, relpath: str | None) -> bool:
        """Take `key` to receive into for `relpath`, or (None) to remove; False if taken."""
        with self._lock:
            if key in self._claimed:
                return False
            idle_path = self._idle.pop(key, None)
            if idle_path is not None:
                self._unindex(idle_path, key)
            self._claimed[key] = relpath
            if relpath is not None:
                self._by_path.setdefault(relpath, set()).add(key)
            return True

    def unclaim(self, key: str) -> None:
        """The claimed partial is gone from disk (or was never made): forget the key."""
        with self._lock:
            relpath = self._claimed.pop(key, None)
            self._superseded.discard(key)
            if relpath is not None:
                self._unindex(relpath, key)

    def release(self, key: str) -> bool:
        """The claimed partial stays on disk for a resume: it is idle now.

        Returns False instead, leaving the key claimed for its removal, when another version
        of the same path was opened meanwhile: this one could never resume.
        """
        with self._lock:
            if key in self._superseded:
                return False
            relpath = self._claimed.pop(key)
            assert relpath is not None  # a partial being received, not one being removed
            self._idle[key] = relpath  # and it stays in _by_path
            return True

    def supersede(self, relpath: str, current: str) -> list[str]:
        """`current` (claimed) is the version of `relpath` now: the other versions' go.

        Claims for removal, and returns, the idle ones; marks those that a connection is
        receiving into to be dropped when it releases them.
        """
        with self._lock:
            keys = self._by_path.get(relpath)
            if keys is None or len(keys) == 1:  # `current` alone: the usual case
                return []
            taken = []
            for key in keys - {current}:
                if self._idle.pop(key, None) is None:
                    self._superseded.add(key)
                else:
                    self._claimed[key] = None
                    taken.append(key)
            for key in taken:
                self._unindex(relpath, key)
            return taken

    def _unindex(self, relpath: str, key: str) -> None:
        keys = self._by_path[relpath]
        keys.discard(key)
        if not keys:
            del self._by_path[relpath]
