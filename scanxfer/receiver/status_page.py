"""The status page at / on the metrics port: who sent what lately, and the room left.

For a lab technician without a shell on the Pi: one small HTML page, no script, no external
asset (the Pi may have no Internet), refreshed by the browser every few seconds.  It shows
file names, which is why it is served only where metrics_listen says (loopback by default).
"""

from __future__ import annotations

import os
import time
from datetime import date, datetime
from html import escape

from ..keys.seen import Sighting
from ..sizes import human_size
from .shared import Services

REFRESH_SECONDS = 5

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; }
"""


def render(services: Services, name: str) -> bytes:
    """The page as it stands now, UTF-8; `name` is the receiver's."""
    stats, store = services.stats, services.store
    sightings = services.gate.seen.sightings()
    disk = os.statvfs(store.incoming_dir)
    free = disk.f_bavail * disk.f_frsize
    with stats.lock:
        senders = sorted(stats.senders.items())
        rows = [
            _sender_row(
                sender,
                count.last_file,
                count.last_received,
                _seen(sightings.get(sender)),
                *_today(count.day, count.files_today, count.bytes_today),
            )
            for sender, count in senders
        ]
        recent = [
            f"<tr><td>{_when(item.at)}</td><td>{escape(item.sender)}</td>"
            f"<td>{escape(item.path)}</td><td class=n>{human_size(item.size)}</td></tr>"
            for item in stats.recent
        ]
    body = (
        f"<h1>scanxfer receiver {escape(name)}</h1>"
        f"<p>Free space in {escape(str(store.incoming_dir))}: {human_size(free)}"
        f" &middot; counting since the receiver started, {_when(stats.started)}"
        f" &middot; page made {_when(time.time())}, refreshed every {REFRESH_SECONDS} s</p>"
        "<h2>Senders</h2><table id=senders><tr><th>Sender</th><th>Last seen</th>"
        "<th>Last file</th><th>Received at</th><th>Files today</th><th>Bytes today</th></tr>"
        + ("".join(rows) or "<tr><td colspan=6>no file received since the start</td></tr>")
        + "</table><h2>Recent files</h2><table id=recent><tr><th>Stored at</th><th>Sender</th>"
        "<th>File</th><th>Size</th></tr>"
        + ("".join(recent) or "<tr><td colspan=4>none yet</td></tr>")
        + "</table>"
    )
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>scanxfer receiver</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    ).encode()


def _seen(sighting: Sighting | None) -> float | None:
    return sighting.at.timestamp() if sighting is not None else None


def _today(day: date, files: int, size: int) -> tuple[int, int]:
    """Today's counts: a sender silent since yesterday has none yet."""
    return (files, size) if day == date.today() else (0, 0)


def _sender_row(
    name: str, last_file: str, received: float | None, seen: float | None, files: int, size: int
) -> str:
    return (
        f"<tr><td>{escape(name)}</td><td>{_when(seen)}</td><td>{escape(last_file)}</td>"
        f"<td>{_when(received)}</td><td class=n>{files}</td>"
        f"<td class=n>{human_size(size)}</td></tr>"
    )


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "&ndash;"
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
