"""`scanxfer status`: the running sender's status file, and the report built from it.

The report's fields are checked against docs/status.md, which documents `status --json` as a
stable schema: a field emitted but not documented, or documented but not emitted, fails.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

import scanxfer
from scanxfer.config import SenderConfig, load_sender_config
from scanxfer.sender import status, status_file
from scanxfer.sender.delivery import Delivery
from scanxfer.sender.job import FileJob
from scanxfer.sender.ledger import Destination, Ledger
from scanxfer.sender.run_state import LinkState
from scanxfer.sender.session import SCANXFER
from scanxfer.tls import format_fingerprint
from scanxfer.watcher import Version

DOC = Path(scanxfer.__file__).parents[1] / "docs" / "status.md"
FIELD_ROW = re.compile(r"^\| `([a-z_\[\].]+)` \|", re.MULTILINE)


def settings(tmp_path: Path) -> SenderConfig:
    file = tmp_path / "sender.yaml"
    file.write_text(
        f"watch_dir: {tmp_path / 'scans'}\nstate_dir: {tmp_path / 'state'}\n"
        f"fingerprint: {'ab' * 32}\n"
    )
    return load_sender_config(file)


def scan(tmp_path: Path, name: str, rows: int = 4) -> Version:
    path = tmp_path / "scans" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.zeros((rows, 4)))
    return Version.of(path.lstat())


class FakeClock:
    def __init__(self) -> None:
        self.time = 1000.0

    def __call__(self) -> float:
        return self.time


def following(tmp_path: Path, clock: FakeClock) -> tuple[status_file.StatusFile, Delivery]:
    config = settings(tmp_path)
    destination = Destination.of(config)
    ledger = Ledger(config.state_dir, destination)
    delivery = Delivery(config, ledger, once=False, kind=SCANXFER)
    writer = status_file.StatusFile(config.state_dir, clock=clock)
    writer.follow(delivery, destination)
    return writer, delivery


def written(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "state" / status_file.STATUS_NAME).read_text())
    return data


def test_the_status_file_is_written_on_changes_at_most_once_a_second(tmp_path: Path) -> None:
    clock = FakeClock()
    writer, delivery = following(tmp_path, clock)
    first = written(tmp_path)
    assert (first["running"], first["pid"]) == (True, os.getpid())
    assert first["connection"]["state"] == "idle"
    delivery.queued["a.npy"] = FileJob("a.npy", tmp_path / "a.npy", Version(1, 1, 1, 1))
    writer.update()
    assert written(tmp_path)["queue"]["files"] == 0  # within the second: not yet
    clock.time += status_file.MIN_INTERVAL_SECONDS
    writer.update()
    assert written(tmp_path)["queue"]["files"] == 1
    # A change of the connection's state is written at once, with its reason.
    delivery.link.become(LinkState.RETRYING, "cannot connect: refused", 2.0)
    writer.update()
    link = written(tmp_path)["connection"]
    assert (link["state"], link["last_error"], link["failures"]) == (
        "retrying",
        "cannot connect: refused",
        1,
    )
    assert datetime.fromisoformat(link["since"]).utcoffset() is not None  # local, with offset
    assert status_file.read(tmp_path / "state") is not None
    writer.stopped()
    assert written(tmp_path)["running"] is False
    assert status_file.read(tmp_path / "state") is None


def test_a_sign_of_life_is_written_even_when_nothing_changes(tmp_path: Path) -> None:
    clock = FakeClock()
    writer, _ = following(tmp_path, clock)
    path = tmp_path / "state" / status_file.STATUS_NAME
    os.utime(path, (0, 0))
    clock.time += status_file.HEARTBEAT_SECONDS - 0.1
    writer.update()
    assert path.stat().st_mtime == 0
    clock.time += 0.2
    writer.update()
    assert path.stat().st_mtime > 0


def rewrite(tmp_path: Path, **changes: Any) -> None:
    path = tmp_path / "state" / status_file.STATUS_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_dead_pid_or_a_stale_file_is_a_sender_not_running(tmp_path: Path) -> None:
    following(tmp_path, FakeClock())
    assert status_file.read(tmp_path / "state") is not None
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    rewrite(tmp_path, pid=int(gone.stdout))
    assert status_file.read(tmp_path / "state") is None
    stale = time.time() - status_file.STALE_SECONDS - 5
    rewrite(tmp_path, pid=os.getpid(), updated=status_file.local_time(stale))
    assert status_file.read(tmp_path / "state") is None
    rewrite(tmp_path, updated=status_file.local_time(time.time()))
    assert status_file.read(tmp_path / "state") is not None
    (tmp_path / "state" / status_file.STATUS_NAME).write_text("{half a fi")
    assert status_file.read(tmp_path / "state") is None


def test_the_backlog_holds_only_files_that_still_exist_in_this_folder(tmp_path: Path) -> None:
    config = settings(tmp_path)
    here = Destination.of(config)
    ledger = Ledger(config.state_dir, here)
    for name in ("kept.npy", "deleted.npy", "torn.npy"):
        ledger.observe(name, scan(tmp_path, name))
    (tmp_path / "scans" / "deleted.npy").unlink()
    with (tmp_path / "scans" / "torn.npy").open("r+b") as torn:
        torn.truncate(100)  # rewritten since it was found complete: incomplete now
    elsewhere = Ledger(config.state_dir, Destination(here.receiver, str(tmp_path / "other")))
    elsewhere.observe("kept.npy", Version(1, 1, 1, 1))
    elsewhere.observe("ghost.npy", Version(1, 1, 1, 1))
    data = status.report(config)
    size = (tmp_path / "scans" / "kept.npy").stat().st_size
    assert (data["backlog"]["files"], data["backlog"]["bytes"]) == (1, size)
    assert [item["path"] for item in data["incomplete"]] == ["torn.npy"]
    assert data["sender"]["running"] is False and data["connection"] is None


def flattened(value: Any, prefix: str = "") -> set[str]:
    """Every field name in `value`, dotted, with [] for the items of a list."""
    names: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{prefix}.{key}" if prefix else key
            names |= {name} | flattened(item, name)
    elif isinstance(value, list):
        for item in value:
            names |= flattened(item, f"{prefix}[]")
    return names


def full_report(tmp_path: Path) -> dict[str, Any]:
    """A report with every optional part present: running, sending, failed, incomplete."""
    writer, delivery = following(tmp_path, FakeClock())
    ledger = delivery.ledger
    ledger.observe("done.npy", scan(tmp_path, "done.npy"))
    ledger.delivered("done.npy", "done.npy", scan(tmp_path, "done.npy"))
    ledger.observe("bad.npy", scan(tmp_path, "bad.npy"))
    ledger.refused("bad.npy", "bad_name: no", final=True)
    ledger.observe("waiting.npy", scan(tmp_path, "waiting.npy"))
    (tmp_path / "scans" / "torn.npy").write_bytes(b"\x93NUMPY torn")
    job = FileJob("waiting.npy", tmp_path / "scans" / "waiting.npy", Version(1, 1, 1, 1))
    delivery.offered["waiting.npy"] = job
    delivery.link.become(LinkState.CONNECTED)
    writer.update()
    data = status.report(delivery.config)
    assert data["sender"]["running"] and data["current_file"]["path"] == "waiting.npy"
    assert data["failed"] and data["incomplete"] and data["last_delivered"]
    return data


def test_the_documented_fields_are_exactly_the_fields_emitted(tmp_path: Path) -> None:
    documented = set(FIELD_ROW.findall(DOC.read_text()))
    assert len(documented) > 30
    assert flattened(full_report(tmp_path)) == documented


def test_json_times_are_local_with_their_offset(tmp_path: Path) -> None:
    data = full_report(tmp_path)
    for stamp in (data["now"], data["sender"]["started"], data["last_delivered"]["delivered_at"]):
        assert datetime.fromisoformat(stamp).utcoffset() is not None, stamp


def test_the_receiver_shows_its_fingerprint_as_everywhere_else(tmp_path: Path) -> None:
    config = settings(tmp_path)
    out = io.StringIO()
    assert status.print_status(config, as_json=False, out=out) == 0
    shown = format_fingerprint("ab" * 32)
    assert f"delivering to {config.receiver} (certificate {shown})\n" in out.getvalue()
