"""The sender's crash-safe journal of what it has delivered (SQLite in WAL mode).

The receiver already refuses to store a second copy of identical content, so
the journal is not what makes delivery exactly-once; it is what makes a restart
cheap and honest: files delivered before a crash are not hashed and offered
again, files refused for good stay refused until they change, a file changed
after delivery is recognised as a new version, and `scanxfer status` can say
what is waiting, what failed and why.

Each row is one relative path.  A row's version is its (size, mtime_ns,
ctime_ns, inode) -- see `watcher.Version`: the journal compares it with the file
on disk to decide whether there is anything to do.  Journals written before the
ctime and inode were kept have NULL there; such a row is matched on size and
mtime once, and learns the other two, so an upgrade sends nothing again.
Every state change is its own committed transaction, so a `kill -9`
loses at most the change in progress, and every such loss is safe: a file
whose "delivered" was lost is offered again and ACKed as a duplicate.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..watcher import Version

LEDGER_NAME = "ledger.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path         TEXT PRIMARY KEY,
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    digest       BLOB,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    first_seen   REAL NOT NULL,
    delivered_at REAL,
    stored_path  TEXT,
    versions     INTEGER NOT NULL DEFAULT 0,
    ctime_ns     INTEGER,
    inode        INTEGER,
    delivered_digest BLOB
);
CREATE INDEX IF NOT EXISTS files_by_state ON files (state, first_seen);
"""
# Columns added after the first release, with their declarations, for journals made before.
_ADDED_COLUMNS = {"ctime_ns": "INTEGER", "inode": "INTEGER", "delivered_digest": "BLOB"}


class State(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Verdict(enum.Enum):
    """What to do with a complete file the watcher reports."""

    SEND = "send"  # new, or unfinished before a restart
    NEW_VERSION = "new_version"  # delivered before, changed since: send again
    RETRY_CHANGED = "retry_changed"  # failed before, changed since: try again
    ALREADY_DELIVERED = "already_delivered"  # nothing to send (after_send may still be due)
    FAILED_BEFORE = "failed_before"  # refused for good and unchanged: leave it


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    mtime_ns: int
    state: State
    attempts: int
    last_error: str | None
    first_seen: float
    delivered_at: float | None
    stored_path: str | None


class Ledger:
    """One sender's journal; one instance per process, used from one thread."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / LEDGER_NAME
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # WAL lets `scanxfer status` read while the daemon writes.  NORMAL
        # survives a process crash; a power cut may lose the last changes,
        # which costs a duplicate offer, never a lost file.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(files)")}
        for name, declaration in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE files ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        self._db.close()

    def observe(self, path: str, version: Version) -> Verdict:
        """Record a complete file the watcher found and say what to do with it."""
        row = self._db.execute("SELECT * FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO files (path, size, mtime_ns, ctime_ns, inode, state, first_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (path, *version, State.PENDING, time.time()),
            )
            return Verdict.SEND
        unchanged = self._same_version(row, version)
        state = State(row["state"])
        if unchanged and state is State.DELIVERED:
            return Verdict.ALREADY_DELIVERED
        if unchanged and state is State.FAILED:
            return Verdict.FAILED_BEFORE
        if not unchanged or state in (State.DELIVERED, State.FAILED):
            self._db.execute(
                "UPDATE files SET size = ?, mtime_ns = ?, ctime_ns = ?, inode = ?, state = ?, "
                "attempts = 0, last_error = NULL, digest = NULL, first_seen = ? WHERE path = ?",
                (*version, State.PENDING, time.time(), path),
            )
        if state is State.DELIVERED:
            return Verdict.NEW_VERSION
        if state is State.FAILED:
            return Verdict.RETRY_CHANGED
        return Verdict.SEND

    def _same_version(self, row: sqlite3.Row, version: Version) -> bool:
        if (row["size"], row["mtime_ns"]) != (version.size, version.mtime_ns):
            return False
        if row["ctime_ns"] is None:
            # A row from before ctime and inode were kept: learn them now.
            self._db.execute(
                "UPDATE files SET ctime_ns = ?, inode = ? WHERE path = ?",
                (version.ctime_ns, version.inode, row["path"]),
            )
            return True
        return (row["ctime_ns"], row["inode"]) == (version.ctime_ns, version.inode)

    def sending(self, path: str, version: Version, digest: bytes) -> None:
        self._db.execute(
            "UPDATE files SET state = ?, size = ?, mtime_ns = ?, ctime_ns = ?, inode = ?, "
            "digest = ? WHERE path = ?",
            (State.SENDING, *version, digest, path),
        )

    def delivered(
        self, path: str, stored_path: str, version: Version, digest: bytes | None = None
    ) -> None:
        """Record the version that was delivered, which may be older than the one last seen.

        A file rewritten while its previous version was in flight must stay owed: if the
        row kept the newer version here, a crash now would let a restart skip it.  `digest`
        is that of the bytes delivered, when known.
        """
        self._db.execute(
            "UPDATE files SET state = ?, delivered_at = ?, stored_path = ?, size = ?, "
            "mtime_ns = ?, ctime_ns = ?, inode = ?, delivered_digest = ?, "
            "last_error = NULL, versions = versions + 1 WHERE path = ?",
            (State.DELIVERED, time.time(), stored_path, *version, digest, path),
        )

    def delivered_digest(self, path: str, size: int) -> bytes | None:
        """The digest of the delivered version of `path`, if it had `size` bytes and is known.

        A file whose ctime changed but not its size may hold the same bytes (a chmod, or a
        program that rewrote it identically): hashing it locally then beats sending it.
        """
        row = self._db.execute(
            "SELECT delivered_digest FROM files WHERE path = ? AND size = ?", (path, size)
        ).fetchone()
        digest = row["delivered_digest"] if row is not None else None
        return bytes(digest) if digest and any(digest) else None

    def refused(self, path: str, error: str, final: bool) -> None:
        """A NACK: `final` ones stay failed until the file changes."""
        state = State.FAILED if final else State.PENDING
        self._db.execute(
            "UPDATE files SET state = ?, attempts = attempts + 1, last_error = ? WHERE path = ?",
            (state, error, path),
        )

    def forget(self, path: str) -> None:
        """The file vanished before it was delivered: nothing is owed any more."""
        self._db.execute("DELETE FROM files WHERE path = ? AND state != ?", (path, State.DELIVERED))

    def entries(self, *states: State) -> list[Entry]:
        marks = ", ".join("?" for _ in states)
        rows = self._db.execute(
            f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY first_seen, path", states
        ).fetchall()
        return [_entry(row) for row in rows]

    def last_delivered(self, count: int = 1) -> list[Entry]:
        rows = self._db.execute(
            "SELECT * FROM files WHERE state = ? ORDER BY delivered_at DESC LIMIT ?",
            (State.DELIVERED, count),
        ).fetchall()
        return [_entry(row) for row in rows]

    def delivered_since(self, since: float) -> tuple[int, int]:
        """(files, bytes) delivered since the epoch time `since`."""
        files, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files "
            "WHERE state = ? AND delivered_at >= ?",
            (State.DELIVERED, since),
        ).fetchone()
        return files, size

    def count(self, state: State) -> int:
        return self._db.execute("SELECT COUNT(*) FROM files WHERE state = ?", (state,)).fetchone()[
            0
        ]


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        path=row["path"],
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        state=State(row["state"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        first_seen=row["first_seen"],
        delivered_at=row["delivered_at"],
        stored_path=row["stored_path"],
    )
