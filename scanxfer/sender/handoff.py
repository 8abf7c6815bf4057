"""What happens to a source file after its durable ACK: keep, move to sent/, or delete.

Called only once the journal records the delivery, and again for a delivered
file found still in place after a restart, so a crash between the ACK and the
hand-off just redoes the hand-off.  The file must still be the version that was
delivered: a scan rewritten in the meantime is never moved or deleted.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from ..config import SenderConfig

log = logging.getLogger("scanxfer.sender")


def after_delivery(config: SenderConfig, relpath: str, size: int, mtime_ns: int) -> None:
    if config.after_send == "keep":
        return
    source = config.watch_dir / relpath
    try:
        stat = source.stat()
    except FileNotFoundError:
        return  # already handed off before a restart
    if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
        log.warning("%s changed after it was sent; leaving it in place", relpath)
        return
    try:
        if config.after_send == "delete":
            source.unlink()
            log.info("deleted %s after delivery", relpath)
        else:
            target = _free_name(config.sent_dir / relpath)
            _move(source, target)
            log.info("moved %s to %s after delivery", relpath, target)
    except OSError as error:
        log.warning("could not %s %s after delivery: %s", config.after_send, relpath, error)


def _free_name(target: Path) -> Path:
    """`target`, or `stem~N.suffix` beside it when sent/ already holds that name."""
    candidate, number = target, 0
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = target.with_name(f"{target.stem}~{number}{target.suffix}")
    return candidate


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        # sent/ is on another filesystem: copy durably, then remove the original.
        shutil.copy2(source, target)
        with target.open("rb") as handle:
            os.fsync(handle.fileno())
        source.unlink()
