"""The receiver's record of sender keys: <state_dir>/keys.json.

Only verifiers are kept (see scanxfer.protocol.auth): a copy of this file lets nobody log in
as a sender.  The secret itself is printed once, by `scanxfer keys add`, and lives on in the
sender's settings.

    {"version": 1,
     "senders": {"lab-pc": {"stored_key": HEX, "server_key": HEX,
                            "created": "2024-05-01T09:30:00Z", "revoked": null}}}

Two readers with different needs: KeyFile, used by an administrator's command, changes the
file under a lock and refuses to touch a damaged one; Keyring, used by the running receiver,
follows the file as it changes, so a key added or revoked counts from the next handshake,
without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from scanxfer import atomic
from scanxfer.errors import ScanxferError
from scanxfer.protocol.auth import Verifier, decode_secret, new_secret, verifier

KEYS_FILE_NAME = "keys.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_HEX32 = re.compile(r"[0-9a-f]{64}", re.ASCII)

log = logging.getLogger(__name__)


class KeysError(ScanxferError, KeyError):
    """The key file cannot be read or changed as asked; the message says what to do.

    A KeyError, for callers that treat "no such sender" as one, but printed as the plain
    message: KeyError's own str() would wrap it in quotes.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class KeyExists(KeysError):
    """The sender has an active key already; the caller says how to replace it."""


@dataclass(frozen=True)
class KeyEntry:
    """One sender's record; kept after revocation, so the receiver can log why it refuses."""

    name: str
    verifier: Verifier
    created: str
    revoked: str | None

    @property
    def active(self) -> bool:
        return self.revoked is None


def keys_path(state_dir: Path) -> Path:
    return state_dir / KEYS_FILE_NAME


def check_sender_name(name: str) -> str:
    """`name` if it can name a sender; ValueError otherwise.

    With per_sender_dirs the name becomes a directory under incoming_dir, so it must be one
    plain, visible path component: no '/', no leading '.', nothing but ASCII letters,
    digits, '.', '_' and '-'.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} cannot name a sender: use 1 to 64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, e.g. lab-pc"
        )
    return name


class KeyFile:
    """The key file as an administrator changes it.

    Every change is read-modify-write under an exclusive lock on keys.json.lock, so two
    `scanxfer keys add` at once both end up in the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, name: str, *, replace: bool = False) -> str:
        """Issue a key for `name`; the new secret, which is stored nowhere on this side.

        An active name is refused unless `replace` (the old key stops working); a revoked
        name may be issued again.
        """
        check_sender_name(name)
        secret = new_secret()
        with self._locked() as entries:
            current = entries.get(name)
            if current is not None and current.active and not replace:
                raise KeyExists(f"sender {name!r} already has a key")
            entries[name] = KeyEntry(name, verifier(decode_secret(secret)), _now(), None)
        return secret

    def revoke(self, name: str) -> str | None:
        """Make `name`'s key stop working from the next handshake; the record stays.

        Returns when it had been revoked already (nothing changes then), else None.
        """
        with self._locked() as entries:
            current = entries.get(name)
            if current is None:
                known = ", ".join(sorted(entries)) or "none"
                raise KeysError(
                    f"no sender named {name!r} in {self.path} (senders: {known}); "
                    f"see them with: scanxfer keys list"
                )
            if not current.active:
                return current.revoked
            entries[name] = KeyEntry(name, current.verifier, current.created, _now())
        return None

    def entries(self) -> list[KeyEntry]:
        """Every sender's record, by name; none when the file does not exist yet."""
        try:
            return sorted(_read(self.path).values(), key=lambda entry: entry.name)
        except PermissionError:
            raise KeysError(atomic.permission_hint(self.path, self.path.parent)) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, KeyEntry]]:
        """The entries to change, written back atomically when the block ends without error."""
        state_dir = self.path.parent
        try:
            atomic.make_dirs(state_dir)
            owner = atomic.state_owner(state_dir)
            lock_path = self.path.with_name(self.path.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if owner is not None:
                    os.fchown(fd, *owner)
                fcntl.flock(fd, fcntl.LOCK_EX)
                entries = _read(self.path)
                yield entries
                atomic.write(self.path, _encode(entries), mode=0o600, owner=owner)
            finally:
                os.close(fd)  # releases the lock
        except PermissionError as exc:
            path = exc.filename or self.path
            raise KeysError(atomic.permission_hint(path, state_dir)) from None


class Keyring:
    """The key file as the running receiver sees it: re-read whenever it changes on disk.

    Safe to share between connection threads.  A file that turns bad while the receiver
    runs does not lock everybody out: the entries read before stay in force, and the error
    is logged once for each change of the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, KeyEntry] = {}
        self._signature: object = object()  # matches no stat result: the first refresh reads

    def lookup(self, name: str) -> KeyEntry | None:
        """The current record for `name`, revoked ones included; None for a stranger."""
        self.refresh()
        return self._entries.get(name)

    def active_names(self) -> set[str]:
        self.refresh()
        return {name for name, entry in self._entries.items() if entry.active}

    def retired(self, name: str, key: Verifier) -> str | None:
        """Why `key`, which `name` authenticated with, no longer counts; None if it still does.

        As of the last `refresh`: the caller refreshes once for a whole round of checks.
        """
        entry = self._entries.get(name)
        if entry is None:
            return "its key was removed from keys.json"
        if not entry.active:
            return "its key was revoked"
        if entry.verifier != key:
            return "its key was replaced (keys add --replace)"
        return None

    def refresh(self) -> bool:
        """Re-read the file if its inode, mtime or size changed; True if it did.

        Writers replace the file by rename, so every change brings a new inode: a stat per
        handshake is enough to notice it.
        """
        with self._lock:
            try:
                info = os.stat(self.path)
                signature: object = (info.st_ino, info.st_mtime_ns, info.st_size)
            except FileNotFoundError:
                signature = None
            except OSError as exc:
                signature = ("unreadable", exc.errno)
            if signature == self._signature:
                return False
            self._signature = signature
            try:
                self._entries = _read(self.path)
            except (KeysError, OSError) as exc:
                log.error(
                    "%s; keeping the %d sender key(s) read before until it is fixed",
                    exc,
                    len(self._entries),
                )
            return True


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: Path) -> dict[str, KeyEntry]:
    """The entries in `path` by name; {} if it does not exist, KeysError if it is damaged."""
    try:
        return atomic.read_json(path, _decode, {})
    except atomic.Damaged as exc:
        raise KeysError(
            f"{path} is damaged ({exc.problem}) and was left as it is; restore it from a "
            f"backup, or move it aside and issue every sender a new key with "
            f"`scanxfer keys add NAME`"
        ) from None


def _decode(document: object) -> dict[str, KeyEntry]:
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValueError(f'expected a JSON object with "version": {FORMAT_VERSION}')
    senders = document["senders"]
    if not isinstance(senders, dict):
        raise ValueError('"senders" is not an object')
    return {
        check_sender_name(name): _decode_entry(name, record) for name, record in senders.items()
    }


def _decode_entry(name: str, record: object) -> KeyEntry:
    if not isinstance(record, dict):
        raise ValueError(f"the record of {name!r} is not an object")
    keys = (record["stored_key"], record["server_key"])
    created, revoked = record["created"], record["revoked"]
    if not all(isinstance(key, str) and _HEX32.fullmatch(key) for key in keys):
        raise ValueError(f"the keys of {name!r} are not 64 hex digits each")
    if not isinstance(created, str) or not (revoked is None or isinstance(revoked, str)):
        raise ValueError(f"the dates of {name!r} are not text")
    stored_key, server_key = (bytes.fromhex(key) for key in keys)
    return KeyEntry(name, Verifier(stored_key, server_key), created, revoked)


def _encode(entries: dict[str, KeyEntry]) -> bytes:
    senders = {
        name: {
            "stored_key": entry.verifier.stored_key.hex(),
            "server_key": entry.verifier.server_key.hex(),
            "created": entry.created,
            "revoked": entry.revoked,
        }
        for name, entry in sorted(entries.items())
    }
    document = {"version": FORMAT_VERSION, "senders": senders}
    return (json.dumps(document, indent=2) + "\n").encode("ascii")
