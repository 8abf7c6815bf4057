"""`scanxfer status`: whether the sender runs, how its connection stands, what waits and failed.

Three sources, each for what it alone knows: the status file the running daemon keeps
(`status_file`: running or not, connected or retrying since when and why, the file being
sent), the journal (safe to read while the daemon writes: SQLite WAL) for what waits,
failed and was delivered, and one scan of the watch directory for `.npy` files that are
not complete, such as a scan whose writer crashed halfway, which the sender will never send.

Every file reported as waiting or failed still exists: a row for a file deleted since, or
from another watch folder or receiver, is no backlog of this sender's.  The `--json` form
is a stable schema (`SCHEMA_VERSION`), documented field by field in docs/status.md.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, TextIO

from ..config import SenderConfig
from ..errors import ExitCode
from ..sizes import human_size
from ..tls import format_fingerprint
from ..watcher import Condition, assess, scan
from . import status_file
from .ledger import SHA256_IDENTITY, Destination, Entry, Ledger, State
from .status_file import local_time

SCHEMA_VERSION = 1
# The rate is over this window: bytes of files the receiver newly stored, ACKed within it.
RATE_WINDOW_SECONDS = 60


def report(config: SenderConfig) -> dict[str, Any]:
    """The status as plain data (the --json output)."""
    running = status_file.read(config.state_dir)
    # The running sender's own receiver and folder, if it runs: it may have been started
    # with --to or --watch that differ from the settings file.
    destination = (
        Destination(running["receiver_identity"], running["watch_dir"])
        if running is not None
        else Destination.of(config)
    )
    ledger = Ledger(config.state_dir, destination)
    try:
        return _report(config, destination, ledger, running)
    finally:
        ledger.close()


def _report(
    config: SenderConfig, destination: Destination, ledger: Ledger, running: dict[str, Any] | None
) -> dict[str, Any]:
    now = time.time()
    incomplete = _incomplete(config)
    # A file not complete now waits for its writer, not for the sender: it is listed there.
    unfinished = {item["path"] for item in incomplete}
    waiting = _existing(destination, ledger.entries(State.PENDING, State.SENDING))
    backlog = [entry for entry in waiting if entry.path not in unfinished]
    oldest = backlog[0].first_seen if backlog else None
    last = ledger.last_delivered()
    files, stored = ledger.delivered_since(now - RATE_WINDOW_SECONDS, stored_only=True)
    return {
        "schema_version": SCHEMA_VERSION,
        "now": local_time(now),
        "watch_dir": destination.watch_dir,
        "receiver": running["receiver"] if running else str(config.receiver),
        "receiver_identity": destination.receiver,
        "sender": _sender(running),
        "connection": running["connection"] if running else None,
        "current_file": running["current_file"] if running else None,
        "backlog": {
            "files": len(backlog),
            "bytes": sum(entry.size for entry in backlog),
            "oldest_since": local_time(oldest),
            "oldest_age_seconds": round(now - oldest, 1) if oldest is not None else None,
        },
        "delivered": ledger.count(State.DELIVERED),
        "last_delivered": _delivered(last[0]) if last else None,
        "rate": {
            "window_seconds": RATE_WINDOW_SECONDS,
            "files": files,
            "bytes": stored,
            "bytes_per_second": round(stored / RATE_WINDOW_SECONDS, 1),
        },
        "failed": [
            {
                "path": entry.path,
                "reason": entry.last_error or "",
                "attempts": entry.attempts,
                "since": local_time(entry.first_seen),
            }
            for entry in _existing(destination, ledger.entries(State.FAILED))
        ],
        "incomplete": incomplete,
    }


def _sender(running: dict[str, Any] | None) -> dict[str, Any]:
    if running is None:
        return {"running": False, "pid": None, "started": None, "updated": None}
    keys = ("pid", "started", "updated")
    return {"running": True, **{key: running.get(key) for key in keys}}


def _existing(destination: Destination, entries: list[Entry]) -> list[Entry]:
    """Only files still there: a deleted file is owed to nobody, and its age means nothing."""
    return [e for e in entries if os.path.lexists(os.path.join(destination.watch_dir, e.path))]


def _delivered(entry: Entry) -> dict[str, Any]:
    return {
        "path": entry.path,
        "stored_path": entry.stored_path,
        "delivered_at": local_time(entry.delivered_at),
    }


def _incomplete(config: SenderConfig) -> list[dict[str, Any]]:
    if not config.watch_dir.is_dir():
        return []
    found = []
    for relpath in scan(config.watch_dir, config.patterns, config.ignore):
        readiness = assess(config.watch_dir / relpath)
        if readiness.version is not None and readiness.condition is not Condition.READY:
            size, reason = readiness.version.size, readiness.reason
            found.append({"path": relpath.as_posix(), "size": size, "reason": reason})
    return found


def print_status(config: SenderConfig, as_json: bool, out: TextIO) -> int:
    data = report(config)
    if as_json:
        json.dump(data, out, indent=2)
        out.write("\n")
        return ExitCode.OK
    for line in _human_lines(data):
        out.write(line + "\n")
    return ExitCode.OK


def _identity(receiver_identity: str) -> str:
    """The journal's name of the receiver, with a fingerprint shown as everywhere else."""
    kind, _, fingerprint = receiver_identity.partition(":")
    if kind == SHA256_IDENTITY:
        return f"certificate {format_fingerprint(fingerprint)}"
    return receiver_identity


def _human_lines(data: dict[str, Any]) -> list[str]:
    backlog, last, rate = data["backlog"], data["last_delivered"], data["rate"]
    oldest = backlog["oldest_age_seconds"]
    waiting = f", oldest waiting {_age(oldest)} (since {backlog['oldest_since']})" if oldest else ""
    lines = [
        f"watching {data['watch_dir']}, delivering to {data['receiver']} "
        f"({_identity(data['receiver_identity'])})",
        *_running_lines(data),
        f"backlog: {backlog['files']} files ({human_size(backlog['bytes'])}){waiting}",
        f"delivered: {data['delivered']} files; stored in the last {rate['window_seconds']} s: "
        f"{rate['files']} files, {human_size(rate['bytes'])}, "
        f"{rate['bytes_per_second'] / 1e6:.2f} MB/s (duplicates not counted)",
        f"last delivered: {last['path']} at {last['delivered_at']} (stored as "
        f"{last['stored_path']})"
        if last
        else "last delivered: nothing yet",
    ]
    if data["failed"]:
        lines.append(f"failed ({len(data['failed'])}), not retried until the file changes:")
        lines += [f"  {item['path']}: {item['reason']}" for item in data["failed"]]
    if data["incomplete"]:
        lines.append(f"not complete, not sent yet ({len(data['incomplete'])}):")
        lines += [
            f"  {item['path']} ({item['size']} bytes): {item['reason']}"
            for item in data["incomplete"]
        ]
    return lines


def _running_lines(data: dict[str, Any]) -> list[str]:
    sender, link, current = data["sender"], data["connection"], data["current_file"]
    if not sender["running"]:
        return ["sender: not running"]
    lines = [f"sender: running (pid {sender['pid']}, since {sender['started']})"]
    state = f"connection: {link['state']} since {link['since']}"
    if link["state"] in ("retrying", "paused"):
        state += f", next attempt {link['next_attempt']}; last error: {link['last_error']}"
    lines.append(state)
    if current is not None:
        done = current["bytes_done"]
        shown = f"{human_size(done)} of " if done is not None else ""
        lines.append(f"sending: {current['path']} ({shown}{human_size(current['size'])})")
    return lines


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
