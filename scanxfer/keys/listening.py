"""Where the running receiver listens: <state_dir>/listening.json, for the pairing line's port.

The settings may say port 5000 while the receiver was started with `--listen :6000` (or port
0, a free one), and a pairing line with the settings' port would send the sender to a closed
door.  So the receiver writes down the address it bound, with its process id, when it starts,
and removes the file when it stops; `scanxfer keys add` believes the file only while that
process still runs (a receiver killed outright leaves it behind), and only if it is the same
process, started at the same moment, not another that got its pid after a crash.

    {"version": 1, "pid": 1234, "started": 5678, "listen": "0.0.0.0:6000"}

`started` is the process's start time in clock ticks since boot (/proc/PID/stat, field 22).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scanxfer import atomic
from scanxfer.config import Address, parse_address

LISTENING_FILE_NAME = "listening.json"
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listening:
    """A receiver process and the address its scanxfer door is bound to."""

    pid: int
    address: Address


def listening_path(state_dir: Path) -> Path:
    return state_dir / LISTENING_FILE_NAME


@contextlib.contextmanager
def recorded(state_dir: Path, address: Address) -> Iterator[None]:
    """Keep the record of this process listening on `address` for as long as the block runs.

    A record that cannot be written costs only the port in new pairing lines (keys add then
    takes the settings'), so it is a warning, never a reason not to serve.
    """
    path = listening_path(state_dir)
    written = _write(path, address)
    try:
        yield
    finally:
        if written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _write(path: Path, address: Address) -> bool:
    pid = os.getpid()
    record = {"version": FORMAT_VERSION, "pid": pid, "started": _start_time(pid)}
    data = json.dumps({**record, "listen": str(address)})
    try:
        atomic.write(path, data.encode() + b"\n", mode=0o644, owner=atomic.state_owner(path.parent))
    except OSError as exc:
        log.warning(
            "cannot record the listening address in %s (%s): `scanxfer keys add` will put the "
            "port of the settings into pairing lines",
            path,
            exc.strerror or exc,
        )
        return False
    return True


def running_receiver(state_dir: Path) -> Listening | None:
    """The record of the receiver running for `state_dir`; None if none runs or it is unreadable."""
    try:
        document = json.loads(listening_path(state_dir).read_text(encoding="utf-8"))
        pid, started = document["pid"], document["started"]
        address = parse_address(document["listen"], "", listening=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or not _is_running(pid, started):
        return None
    return Listening(pid, address)


def _is_running(pid: int, started: object) -> bool:
    """True if the process `pid` that started at `started` still runs."""
    now = _start_time(pid)
    if now is not None:
        return now == started
    try:  # /proc hidden from us (hidepid): all we can learn is whether the pid is taken
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot); None if that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        # The command name, in parentheses, may hold spaces: count fields after its end.
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
