"""`scanxfer install-user-unit`: set the sender up as a systemd user service for this user.

The unit is the one the Debian package ships (systemd/scanxfer-sender.service, carried as
package data), with ExecStart pointed at the Python running this command: a pipx or
virtualenv install then starts the scanxfer that was installed, not whatever `scanxfer`
happens to come first on PATH.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import yaml

from scanxfer import atomic, xdg
from scanxfer.config import default_sender_config_path, load_sender_config
from scanxfer.errors import ScanxferError

log = logging.getLogger(__name__)

UNIT_NAME = "scanxfer-sender.service"
# The line of the shipped unit that names the Debian package's /usr/bin/scanxfer.
_PACKAGED_EXEC_START = "ExecStart=/usr/bin/scanxfer send"


class InstallError(ScanxferError):
    """The unit or the settings cannot be written as asked; the message says what to do."""


def unit_text(python: str) -> str:
    """The shipped user unit, its ExecStart running `python -m scanxfer send`."""
    template = (resources.files("scanxfer") / "units" / UNIT_NAME).read_text(encoding="utf-8")
    if _PACKAGED_EXEC_START not in template:
        raise InstallError(
            f"the packaged {UNIT_NAME} has no line {_PACKAGED_EXEC_START!r}; reinstall scanxfer"
        )
    return template.replace(
        _PACKAGED_EXEC_START, f"ExecStart={systemd_quote(python)} -m scanxfer send"
    )


def systemd_quote(word: str) -> str:
    """One word of a unit's command line, as systemd reads it back (systemd.service(5)).

    `%` starts a specifier and `$` a variable even inside quotes, so both are doubled; quotes
    are added only when needed, to keep the common case readable.
    """
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not any(char.isspace() or char in "\"'\\;" for char in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def user_unit_dir() -> Path:
    """Where systemd looks for a user's own units: $XDG_CONFIG_HOME/systemd/user."""
    return xdg.config_home() / "systemd" / "user"


def install(python: str, receiver: str | None = None, watch_dir: Path | None = None) -> Path:
    """Write the settings (when asked) and the unit, then tell the user manager; the unit path.

    Settings are written only when `receiver` or `watch_dir` is given, and never over an
    existing file: that file is the user's, and may hold more than these two keys.
    """
    if receiver is not None or watch_dir is not None:
        _write_settings(receiver, watch_dir)
    unit = user_unit_dir() / UNIT_NAME
    _write_atomically(unit, unit_text(python), mode=0o644)
    log.info("installed %s", unit)
    _reload_user_manager()
    return unit


def _write_settings(receiver: str | None, watch_dir: Path | None) -> None:
    path = default_sender_config_path()
    if path.exists():
        raise InstallError(
            f"{path} already exists; edit it to change the receiver or the watched folder, "
            f"or run install-user-unit without --to and --watch"
        )
    values: dict[str, str] = {}
    if receiver is not None:
        values["receiver"] = receiver
    if watch_dir is not None:
        watch_dir = watch_dir.expanduser().absolute()
        values["watch_dir"] = str(watch_dir)
    load_sender_config(None, values)  # refuse bad values before anything is written
    if watch_dir is not None:
        _make_watch_dir(watch_dir)
    header = (
        "# scanxfer sender settings, written by `scanxfer install-user-unit`.\n"
        "# Keys left out keep their defaults; any key of the commented defaults file\n"
        "# (config/sender.yaml in the scanxfer source) can be added.\n"
    )
    # Private from the start: `scanxfer pair` adds the sender's key to this file later.
    _write_atomically(path, header + yaml.safe_dump(values, sort_keys=False), mode=0o600)
    log.info("wrote %s", path)


def _make_watch_dir(watch_dir: Path) -> None:
    """Create the folder asked for, so `scanxfer send --once` works right away.

    Here the user names the folder on purpose; the service itself never creates one, where a
    typo would silently be watched instead of the instrument's folder.
    """
    if not watch_dir.is_dir():
        try:
            watch_dir.mkdir(parents=True)
        except OSError as exc:
            raise InstallError(
                f"cannot create the watch folder {watch_dir}: {exc.strerror or exc}; "
                f"create it yourself or choose another with --watch"
            ) from None
        log.info("created the watch folder %s", watch_dir)


def _write_atomically(path: Path, text: str, mode: int) -> None:
    # A half-written unit or settings file would break the service at its next start.
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write(path, text.encode("utf-8"), mode=mode)


def _reload_user_manager() -> None:
    """`systemctl --user daemon-reload`, so a unit that replaces a loaded one takes effect."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        log.warning("systemctl not found: the unit takes effect once systemd reads it")
        return
    result = subprocess.run(
        [systemctl, "--user", "daemon-reload"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        log.warning(
            "cannot reach your systemd user manager (%s); run 'systemctl --user daemon-reload' "
            "in a login session",
            result.stderr.strip() or f"exit status {result.returncode}",
        )
