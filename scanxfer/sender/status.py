"""`scanxfer status`: what the sender has waiting, delivered and given up on.

Read from the journal (safe while the daemon runs: SQLite WAL) plus one scan of
the watch directory for `.npy` files that are not complete, such as a scan
whose writer crashed halfway, which the sender will never send.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from ..config import SenderConfig
from ..errors import ExitCode
from ..sizes import human_size
from ..watcher import Condition, assess, scan
from .ledger import Entry, Ledger, State

RECENT_SECONDS = 600


def report(config: SenderConfig) -> dict[str, Any]:
    """The status as plain data (the --json output)."""
    ledger = Ledger(config.state_dir)
    try:
        now = time.time()
        backlog = ledger.entries(State.PENDING, State.SENDING)
        last = ledger.last_delivered()
        _, recent_bytes = ledger.delivered_since(now - RECENT_SECONDS)
        return {
            "watch_dir": str(config.watch_dir),
            "receiver": str(config.receiver),
            "backlog": {
                "files": len(backlog),
                "bytes": sum(entry.size for entry in backlog),
                "oldest_age_seconds": now - backlog[0].first_seen if backlog else None,
            },
            "last_delivered": _delivered(last[0]) if last else None,
            "delivered": ledger.count(State.DELIVERED),
            "recent_rate_bytes_per_second": recent_bytes / RECENT_SECONDS,
            "failed": [
                {"path": entry.path, "reason": entry.last_error or "", "attempts": entry.attempts}
                for entry in ledger.entries(State.FAILED)
            ],
            "incomplete": _incomplete(config),
        }
    finally:
        ledger.close()


def _delivered(entry: Entry) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(entry.delivered_at or 0, UTC).isoformat(timespec="seconds")
    return {"path": entry.path, "stored_path": entry.stored_path, "delivered_at": stamp}


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


def _human_lines(data: dict[str, Any]) -> list[str]:
    backlog, last = data["backlog"], data["last_delivered"]
    oldest = backlog["oldest_age_seconds"]
    waiting = f", oldest waiting {_age(oldest)}" if oldest is not None else ""
    lines = [
        f"watching {data['watch_dir']}, delivering to {data['receiver']}",
        f"backlog: {backlog['files']} files ({human_size(backlog['bytes'])}){waiting}",
        f"delivered: {data['delivered']} files; last {RECENT_SECONDS // 60} min: "
        f"{data['recent_rate_bytes_per_second'] / 1e6:.2f} MB/s",
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


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
