"""`sudo scanxfer store-in DIR`: have the receiver service store into another folder.

Four things must agree for that, and missing any one made the service refuse every file: the
folder exists and belongs to the service's user; the settings say `incoming_dir: DIR` (with
the partial folder inside it, on the same disk); the service's sandbox lets it write there
(`ReadWritePaths=`) and, at boot, waits for the disk it is on (`RequiresMountsFor=`); and the
service restarts to take it.  This command does the four, in an order that leaves nothing
changed when the folder fails the check: the check runs first, as the service's user.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scanxfer import atomic
from scanxfer.config import ConfigError, load_receiver_config
from scanxfer.config.edit import set_top_level_keys
from scanxfer.errors import ScanxferError
from scanxfer.store import Folders
from scanxfer.store import setup as store_setup

log = logging.getLogger(__name__)

SERVICE = "scanxfer-receiver.service"
DROP_IN_NAME = "scanxfer-storage.conf"
# Where an administrator's own units and drop-ins live (systemd.unit(5)).
ADMIN_UNIT_DIR = Path("/etc/systemd/system")


class StoreInError(ScanxferError):
    """The folder or the files to change cannot be used as asked; the message says why."""


@dataclass(frozen=True)
class Placement:
    """What `store_in` changed, for the summary printed to the admin."""

    folder: Path
    settings: Path
    drop_in: Path
    before: Path


def store_in(folder: Path, settings: Path, unit_dir: Path = ADMIN_UNIT_DIR) -> Placement:
    """Point the receiver at `folder`: make and give it away, check, then write the changes."""
    folder = Path(os.path.abspath(folder))
    _refuse_unit_unsafe(folder)
    config = load_receiver_config(settings)
    owner = store_setup.service_owner(config.state_dir)
    _make_for(folder, owner)
    folders = Folders.of(folder, None, config.state_dir)
    store_setup.check_as(owner, folders, config.min_free_space)
    drop_in = unit_dir / f"{SERVICE}.d" / DROP_IN_NAME
    _write(drop_in, drop_in_text(folder), mode=0o644)
    _write(settings, _settings_text(settings, folder), mode=0o644, check=_loads)
    return Placement(folder, settings, drop_in, Path(os.path.abspath(config.incoming_dir)))


def drop_in_text(folder: Path) -> str:
    """The drop-in that lets the sandboxed service write in `folder`, once its disk is there."""
    path = _unit_path(folder)
    return (
        "# Written by `scanxfer store-in`: the receiver stores into this folder.\n"
        "[Unit]\n"
        f"RequiresMountsFor={path}\n"
        "\n"
        "[Service]\n"
        f"ReadWritePaths={path}\n"
    )


def apply(placement: Placement) -> bool:
    """Have systemd read the drop-in and restart the service if it runs; True if restarted.

    Only where systemd manages this machine and the drop-in went where it reads them.
    """
    if not Path("/run/systemd/system").is_dir() or ADMIN_UNIT_DIR not in placement.drop_in.parents:
        return False
    _systemctl("daemon-reload")
    running = subprocess.run(["systemctl", "is-active", "--quiet", SERVICE], check=False)
    if running.returncode != 0:
        return False
    _systemctl("restart", SERVICE)
    return True


def _make_for(folder: Path, owner: tuple[int, int] | None) -> None:
    """Make `folder` if its parent is there (else its disk may not be mounted); give it away."""
    try:
        if not folder.is_dir():
            if not folder.parent.is_dir():
                raise StoreInError(
                    f"{folder.parent} does not exist: if {folder} is on a disk, mount it first "
                    "(and add it to /etc/fstab, so it is mounted at boot)"
                )
            folder.mkdir()
        if owner is not None:
            os.chown(folder, *owner)
    except OSError as exc:
        raise StoreInError(f"cannot prepare {folder}: {exc.strerror}; run it with sudo") from None


def _settings_text(settings: Path, folder: Path) -> str:
    try:
        text = settings.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = (resources.files("scanxfer") / "defaults" / "receiver.yaml").read_text("utf-8")
    # The partial folder goes with the incoming one, inside it: never across two disks.
    values = {"incoming_dir": json.dumps(str(folder)), "partial_dir": "null"}
    return set_top_level_keys(text, values, by="scanxfer store-in")


def _loads(temporary: Path) -> None:
    try:
        load_receiver_config(temporary)
    except ConfigError as exc:
        raise StoreInError(f"the changed settings would not load: {exc}") from None


def _write(
    path: Path, text: str, *, mode: int, check: Callable[[Path], None] | None = None
) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write(path, text.encode("utf-8"), mode=mode, check=check)
    except OSError as exc:
        raise StoreInError(f"cannot write {path}: {exc.strerror}; run it with sudo") from None


def _unit_path(folder: Path) -> str:
    """A path as a unit file reads it: `%` starts a specifier there, so it is doubled."""
    return str(folder).replace("%", "%%")


def _refuse_unit_unsafe(folder: Path) -> None:
    """A unit file splits these settings at blanks and unquotes: keep the path one plain word."""
    if any(char.isspace() or char in "\"'\\" for char in str(folder)):
        raise StoreInError(
            f"{str(folder)!r} has a blank, a quote or a backslash in it, which the service's "
            "settings cannot carry; choose a folder name without them"
        )


def _systemctl(*arguments: str) -> None:
    result = subprocess.run(["systemctl", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StoreInError(
            f"systemctl {' '.join(arguments)} failed: {result.stderr.strip()}; "
            f"see journalctl -u {SERVICE}"
        )
