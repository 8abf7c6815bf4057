"""`scanxfer store-in DIR` (on the receiver): store received files in another folder.

Kept apart from scanxfer.cli, which registers the command by calling add_commands().
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from scanxfer.config import RECEIVER_CONFIG_PATH

from .common import ExitCode, command

log = logging.getLogger(__name__)

STORE_IN_EXITS = (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.STORAGE)


def add_commands(commands: Any) -> None:
    """Register `store-in` on the top-level subparsers."""
    sub = command(
        commands,
        "store-in",
        _store_in,
        STORE_IN_EXITS,
        help="have the receiver service store files in another folder, e.g. on a USB disk",
        description="Make the receiver service store received files in DIR: make DIR if its "
        "parent exists and give it to the service's user, check as that user that files can "
        "be stored there, set incoming_dir in the receiver's settings (unfinished files are "
        "kept inside it), let the service's sandbox write there and wait for its disk at "
        "boot (a systemd drop-in), and restart the service if it runs. Nothing is changed "
        "when the check fails. Run it with sudo on the receiver.",
        epilog="Files received before stay where they are. The drop-in is "
        "/etc/systemd/system/scanxfer-receiver.service.d/scanxfer-storage.conf.\n\n"
        "example:\n  sudo scanxfer store-in /mnt/usb/scans",
    )
    sub.add_argument("dir", type=Path, metavar="DIR", help="the folder to store into")
    sub.add_argument(
        "-c",
        "--config",
        type=Path,
        default=RECEIVER_CONFIG_PATH,
        metavar="FILE",
        help=f"receiver settings to change (default: {RECEIVER_CONFIG_PATH})",
    )
    sub.add_argument(
        "--unit-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write the service's drop-in (default: /etc/systemd/system)",
    )


def _store_in(args: argparse.Namespace) -> int:
    from scanxfer import store_in

    unit_dir = args.unit_dir or store_in.ADMIN_UNIT_DIR
    placement = store_in.store_in(args.dir, args.config, unit_dir)
    restarted = store_in.apply(placement)
    log.info(
        "the receiver now stores into %s (set in %s; its sandbox allows it in %s).\n"
        "files received before stay in %s.\n%s",
        placement.folder,
        placement.settings,
        placement.drop_in,
        placement.before,
        "restarted scanxfer-receiver: it runs with the new folder."
        if restarted
        else "apply it: sudo systemctl daemon-reload && sudo systemctl restart scanxfer-receiver",
    )
    return ExitCode.OK
