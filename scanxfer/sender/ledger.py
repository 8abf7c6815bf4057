"""The sender's crash-safe journal of what it has delivered (SQLite in WAL mode).

The receiver already refuses to store a second copy of identical content, so
the journal is not what makes delivery exactly-once; it is what makes a restart
cheap and honest: files delivered before a crash are not hashed and offered
again, files refused for good stay refused until they change, a file changed
after delivery is recognised as a new version, and `scanxfer status` can say
what is waiting, what failed and why.

Each row is one file as delivered to one place: the receiver (`Destination.receiver`, see
`receiver_identity`), the watch folder it was found in (absolute, symlinks resolved) and its
path relative to that folder.  So pairing with another receiver finds nothing delivered there
and sends everything, and a second watch folder holding the same relative names is a second
set of files, never "changed after delivery" versions of the first.  Journals from before
(keyed by the relative path alone) are migrated when first opened: their rows belong to the
destination of the process that opens them, so an upgrade sends nothing again.

A row's version is its (size, mtime_ns, ctime_ns, inode) -- see `watcher.Version`: the
journal compares it with the file on disk to decide whether there is anything to do.
Journals written before the ctime and inode were kept have NULL there; such a row is matched
on size and mtime once, and learns the other two.  Every state change is its own committed
transaction, so a `kill -9` loses at most the change in progress, and every such loss is
safe: a file whose "delivered" was lost is offered again and ACKed as a duplicate.  `outcome`
(stored, duplicate, kept beside) is kept so the rate `scanxfer status` shows counts only
bytes the receiver newly stored.
"""

from __future__ import annotations

import enum
import fnmatch
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config import SenderConfig
from ..watcher import Version

LEDGER_NAME = "ledger.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    receiver     TEXT NOT NULL,
    watch_dir    TEXT NOT NULL,
    path         TEXT NOT NULL,
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
    delivered_digest BLOB,
    outcome      TEXT,
    PRIMARY KEY (receiver, watch_dir, path)
);
CREATE INDEX IF NOT EXISTS files_by_state ON files (receiver, watch_dir, state, first_seen);
"""
# Columns added to the first, path-keyed table after its release, for journals made before.
_ADDED_COLUMNS = {"ctime_ns": "INTEGER", "inode": "INTEGER", "delivered_digest": "BLOB"}
# The columns every journal has had since then, copied as they are by the migration.
_KEPT_COLUMNS = (
    "path, size, mtime_ns, digest, state, attempts, last_error, first_seen, delivered_at, "
    "stored_path, versions, ctime_ns, inode, delivered_digest"
)

# A receiver pinned by its certificate is known as "sha256:<64 hex digits>".
SHA256_IDENTITY = "sha256"


def receiver_identity(config: SenderConfig, transport: str = "scanxfer") -> str:
    """Who the receiver is, as the journal keys it.

    With TLS and a pinned certificate, the certificate's SHA-256: the sender talks to
    nothing else, whatever address reaches it.  Without TLS the receiver cannot prove who
    it is, so it is named by the address in the settings, host name as written, and the
    transport (a prototype receiver is another program, even at the same address).
    """
    if transport == "scanxfer" and config.tls and config.fingerprint:
        return f"{SHA256_IDENTITY}:{config.fingerprint}"
    return f"{transport}://{config.receiver}"


@dataclass(frozen=True)
class Destination:
    """Where a journal's rows delivered to: a receiver, from one watch folder."""

    receiver: str
    watch_dir: str

    @classmethod
    def of(cls, config: SenderConfig, transport: str = "scanxfer") -> Destination:
        # Resolved, so ./scans and /home/me/scans (or a symlink to it) are one folder.
        watch = os.path.realpath(config.watch_dir.expanduser())
        return cls(receiver_identity(config, transport), watch)


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


class Outcome(enum.StrEnum):
    """What the receiver did with a delivered file (from its ACK)."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # it already held the same bytes: nothing moved
    KEPT_BESIDE = "kept_beside"  # another file had the name: stored beside it


class Ledger:
    """One sender's journal, seen from one `Destination`: every method reads and writes
    that destination's rows only.  Used from one thread."""

    def __init__(self, state_dir: Path, destination: Destination) -> None:
        self.destination = destination
        self._where = (destination.receiver, destination.watch_dir)
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
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._migrate()
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _columns(self, table: str) -> set[str]:
        return {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def _migrate(self) -> None:
        """Bring a journal keyed by relative path alone to today's keys.

        Its rows are what this sender delivered from the watch folder it is set to, to the
        receiver it is set to: the settings the upgraded sender first starts with.  Runs in
        the constructor's transaction, so a crash during it leaves the old journal as it was.
        """
        present = self._columns("files")
        if not present or "receiver" in present:
            return
        for name, declaration in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE files ADD COLUMN {name} {declaration}")
        self._db.execute("DROP INDEX IF EXISTS files_by_state")
        self._db.execute("ALTER TABLE files RENAME TO files_by_path")
        self._db.execute(_SCHEMA.split(";")[0])
        self._db.execute(
            f"INSERT INTO files (receiver, watch_dir, {_KEPT_COLUMNS}) "
            f"SELECT ?, ?, {_KEPT_COLUMNS} FROM files_by_path",
            self._where,
        )
        self._db.execute("DROP TABLE files_by_path")

    def close(self) -> None:
        self._db.close()

    # Every statement below is limited to this destination's rows by this clause.
    _HERE = "receiver = ? AND watch_dir = ?"

    def _row(self, path: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            f"SELECT * FROM files WHERE {self._HERE} AND path = ?", (*self._where, path)
        ).fetchone()
        return row

    def _update(self, assignments: str, values: tuple[object, ...], path: str) -> None:
        self._db.execute(
            f"UPDATE files SET {assignments} WHERE {self._HERE} AND path = ?",
            (*values, *self._where, path),
        )

    def observe(self, path: str, version: Version) -> Verdict:
        """Record a complete file the watcher found and say what to do with it."""
        row = self._row(path)
        if row is None:
            self._db.execute(
                "INSERT INTO files (receiver, watch_dir, path, size, mtime_ns, ctime_ns, inode, "
                "state, first_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*self._where, path, *version, State.PENDING, time.time()),
            )
            return Verdict.SEND
        unchanged = self._same_version(row, version)
        state = State(row["state"])
        if unchanged and state is State.DELIVERED:
            return Verdict.ALREADY_DELIVERED
        if unchanged and state is State.FAILED:
            return Verdict.FAILED_BEFORE
        if not unchanged or state in (State.DELIVERED, State.FAILED):
            self._update(
                "size = ?, mtime_ns = ?, ctime_ns = ?, inode = ?, state = ?, attempts = 0, "
                "last_error = NULL, digest = NULL, first_seen = ?",
                (*version, State.PENDING, time.time()),
                path,
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
            self._update("ctime_ns = ?, inode = ?", (version.ctime_ns, version.inode), row["path"])
            return True
        return (row["ctime_ns"], row["inode"]) == (version.ctime_ns, version.inode)

    def sending(self, path: str, version: Version, digest: bytes) -> None:
        self._update(
            "state = ?, size = ?, mtime_ns = ?, ctime_ns = ?, inode = ?, digest = ?",
            (State.SENDING, *version, digest),
            path,
        )

    def delivered(
        self,
        path: str,
        stored_path: str,
        version: Version,
        digest: bytes | None = None,
        outcome: Outcome = Outcome.STORED,
    ) -> None:
        """Record the version that was delivered, which may be older than the one last seen.

        A file rewritten while its previous version was in flight must stay owed: if the
        row kept the newer version here, a crash now would let a restart skip it.  `digest`
        is that of the bytes delivered, when known; `outcome` what the receiver did, so the
        rate `scanxfer status` shows counts stored bytes only.
        """
        self._update(
            "state = ?, delivered_at = ?, stored_path = ?, size = ?, mtime_ns = ?, "
            "ctime_ns = ?, inode = ?, delivered_digest = ?, outcome = ?, last_error = NULL, "
            "versions = versions + 1",
            (State.DELIVERED, time.time(), stored_path, *version, digest, outcome),
            path,
        )

    def delivered_version(self, path: str) -> Version | None:
        """The version of `path` last delivered, if it is the one the journal holds now."""
        row = self._row(path)
        if row is None or State(row["state"]) is not State.DELIVERED:
            return None
        return Version(row["size"], row["mtime_ns"], row["ctime_ns"], row["inode"])

    def delivered_digest(self, path: str, size: int) -> bytes | None:
        """The digest of the delivered version of `path`, if it had `size` bytes and is known.

        A file whose ctime changed but not its size may hold the same bytes (a chmod, or a
        program that rewrote it identically): hashing it locally then beats sending it.
        """
        row = self._row(path)
        digest = row["delivered_digest"] if row is not None and row["size"] == size else None
        return bytes(digest) if digest and any(digest) else None

    def refused(self, path: str, error: str, final: bool) -> None:
        """A NACK: `final` ones stay failed until the file changes."""
        state = State.FAILED if final else State.PENDING
        self._update("state = ?, attempts = attempts + 1, last_error = ?", (state, error), path)

    def forget(self, path: str) -> None:
        """The file vanished before it was delivered: nothing is owed any more."""
        self._db.execute(
            f"DELETE FROM files WHERE {self._HERE} AND path = ? AND state != ?",
            (*self._where, path, State.DELIVERED),
        )

    def forget_matching(self, patterns: Iterable[str]) -> list[str]:
        """`send --resend`: forget what was delivered or refused for paths matching a
        pattern, so they are offered again.  Returns the paths forgotten.

        A pattern is a shell wildcard matched against the whole relative path, where `*`
        also matches `/` ("run7/*", "*.npy", "scan_00001?.npy").
        """
        patterns = list(patterns)
        paths = [
            row["path"]
            for row in self._db.execute(f"SELECT path FROM files WHERE {self._HERE}", self._where)
            if any(fnmatch.fnmatchcase(row["path"], pattern) for pattern in patterns)
        ]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for path in paths:
                self._db.execute(
                    f"DELETE FROM files WHERE {self._HERE} AND path = ?", (*self._where, path)
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return sorted(paths)

    def delivered_elsewhere(self, path: str) -> list[str]:
        """Other watch folders from which a file of this relative path reached this receiver.

        The receiver stores by relative path, so it keeps such a file beside the other
        when the bytes differ (`name~1.npy`); the log then says where the other came from.
        """
        rows = self._db.execute(
            "SELECT watch_dir FROM files WHERE receiver = ? AND watch_dir != ? AND path = ? "
            "AND state = ? ORDER BY watch_dir",
            (*self._where, path, State.DELIVERED),
        )
        return [row["watch_dir"] for row in rows]

    def entries(self, *states: State) -> list[Entry]:
        marks = ", ".join("?" for _ in states)
        rows = self._db.execute(
            f"SELECT * FROM files WHERE {self._HERE} AND state IN ({marks}) "
            "ORDER BY first_seen, path",
            (*self._where, *states),
        ).fetchall()
        return [_entry(row) for row in rows]

    def last_delivered(self, count: int = 1) -> list[Entry]:
        rows = self._db.execute(
            f"SELECT * FROM files WHERE {self._HERE} AND state = ? "
            "ORDER BY delivered_at DESC LIMIT ?",
            (*self._where, State.DELIVERED, count),
        ).fetchall()
        return [_entry(row) for row in rows]

    def delivered_since(self, since: float, *, stored_only: bool = False) -> tuple[int, int]:
        """(files, bytes) delivered since the epoch time `since`; with `stored_only`,
        without the files the receiver already held (DUPLICATE: no bytes moved)."""
        files, size = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE {self._HERE} "
            "AND state = ? AND delivered_at >= ? AND (? = 0 OR COALESCE(outcome, '') != ?)",
            (*self._where, State.DELIVERED, since, stored_only, Outcome.DUPLICATE),
        ).fetchone()
        return files, size

    def count(self, state: State) -> int:
        counted: int = self._db.execute(
            f"SELECT COUNT(*) FROM files WHERE {self._HERE} AND state = ?", (*self._where, state)
        ).fetchone()[0]
        return counted


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
