"""What happens to a source file after its durable ACK: keep, move to sent/, or delete.

Called only once the journal records the delivery, and again for a delivered
file found still in place after a restart, so a crash between the ACK and the
hand-off just redoes the hand-off.  Moving or deleting a scan is the one act of
the sender that cannot be undone, so it is done only to the very file that was
delivered -- same inode, size, mtime and ctime -- and only while no process has
it open for writing: a read lease (`watcher.guard_against_writers`) holds off
any writer for the moment of the act, and a writer that tried to open it during
that moment makes the sender put the file back.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..config import SenderConfig
from ..watcher import Version, WriterGuard, WriterPresent, guard_against_writers

log = logging.getLogger("scanxfer.sender")

# The name a scan has between being renamed aside and unlinked (`_remove`): hidden, so the
# watcher passes over it.  A sender killed in between leaves it there.
DELETING = ".scanxfer-deleting"
# The name of a copy into sent/ on another filesystem until it is complete (`_move_across`).
COPYING = ".scanxfer-copying"
WRITER_CAME = "was opened for writing while it was handed off; left in place"


def after_delivery(config: SenderConfig, relpath: str, version: Version) -> bool:
    """Hand the delivered `version` of `relpath` off; False if it must wait for a writer.

    True also when there is nothing to do: `keep`, the file already gone, or a failure
    that a later attempt would not fix (logged).
    """
    if config.after_send == "keep":
        return True
    try:
        return _hand_off(config, relpath, version)
    except FileNotFoundError:
        return True  # already handed off before a restart
    except WriterPresent as busy:
        log.info("%s; it is %s once the writer lets go", busy, _past(config.after_send))
        return False
    except OSError as error:
        log.warning("could not %s %s after delivery: %s", config.after_send, relpath, error)
        return True


def _hand_off(config: SenderConfig, relpath: str, version: Version) -> bool:
    source = config.watch_dir / relpath
    try:
        with guard_against_writers(source) as guard:
            if Version.of(guard.stat) != version:
                log.info("%s changed after it was sent; leaving it in place", relpath)
                return False
            if config.after_send == "delete":
                return _delete(source, guard, relpath)
            return _move(source, config.sent_dir / relpath, guard, relpath)
    except _OtherFilesystem as across:
        return _move_across(source, across.target, version, relpath)


class _OtherFilesystem(Exception):
    """sent/ is on another filesystem: the file must be copied, and not under the lease."""

    def __init__(self, target: Path) -> None:
        super().__init__(str(target))
        self.target = target


def _past(action: str) -> str:
    return "deleted" if action == "delete" else "moved"


def _delete(source: Path, guard: WriterGuard, relpath: str) -> bool:
    if not _remove(source, guard, relpath):
        return False
    log.info("deleted %s after delivery", relpath)
    return True


def _remove(source: Path, guard: WriterGuard, relpath: str) -> bool:
    # Renamed aside first: an unlink cannot be taken back if a writer turns up meanwhile.
    aside = source.with_name(f".{source.name}{DELETING}")
    os.rename(source, aside)
    if not _still_ours(aside, guard):
        _put_back(aside, source, relpath, WRITER_CAME)
        return False
    os.unlink(aside)
    return True


def finish_interrupted_hand_offs(
    config: SenderConfig, delivered: Callable[[str], Version | None]
) -> None:
    """Finish what a sender killed mid-hand-off left: the scans hidden to be deleted, and,
    with after_send: move, the unfinished copies into a sent/ on another filesystem (whose
    originals are all still in the watch folder: an original goes only once its copy is
    complete and in place).

    `delivered(relpath)` is the version the journal says was delivered.  The very file that
    was delivered is deleted, as it was about to be, if after_send still says delete;
    anything else (a writer came back to it, the journal does not know it, after_send
    changed since) goes back under its own name, and the usual course takes it from there.
    """
    if config.after_send == "move" and config.sent_dir.is_dir():
        for partial in config.sent_dir.rglob(f".*{COPYING}"):
            partial.unlink(missing_ok=True)
            log.info("removed %s, a copy a stopped sender left unfinished", partial)
    if not config.watch_dir.is_dir():
        return
    deleting = config.after_send == "delete"
    for aside in config.watch_dir.rglob(f".*{DELETING}"):
        if not aside.is_file() or aside.is_symlink():
            continue
        source = aside.with_name(aside.name[1 : -len(DELETING)])
        relpath = source.relative_to(config.watch_dir).as_posix()
        try:
            _finish_delete(aside, source, relpath, delivered(relpath) if deleting else None)
        except OSError as error:
            log.warning("could not finish deleting %s after delivery: %s", relpath, error)


def _finish_delete(aside: Path, source: Path, relpath: str, delivered: Version | None) -> None:
    """Delete `aside` if it is the `delivered` version (None: never), else put it back."""
    if source.exists() and os.path.samefile(source, aside):
        os.unlink(aside)  # killed while putting it back: it is in place already
        return
    try:
        with guard_against_writers(aside) as guard:
            st = guard.stat
            # The rename aside moved its ctime; size, mtime and inode are the delivered file's.
            ours = delivered is not None and (st.st_size, st.st_mtime_ns, st.st_ino) == (
                delivered.size,
                delivered.mtime_ns,
                delivered.inode,
            )
            if ours and not guard.intruded():
                os.unlink(aside)
                log.info(
                    "deleted %s after delivery (a stopped sender had left it half-done)", relpath
                )
                return
    except WriterPresent:
        pass  # a writer holds it: the data is not the delivered file's for sure
    _put_back(aside, source, relpath, "was being deleted when a sender stopped; put back")


def _move(source: Path, target: Path, guard: WriterGuard, relpath: str) -> bool:
    target = _free_name(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno == errno.EXDEV:
            raise _OtherFilesystem(target) from error
        raise
    if not _still_ours(target, guard):
        _put_back(target, source, relpath, WRITER_CAME)
        return False
    log.info("moved %s to %s after delivery", relpath, target)
    return True


def _move_across(source: Path, target: Path, version: Version, relpath: str) -> bool:
    """Copy durably to sent/ on its other filesystem, then delete the original under a lease.

    The copy is made without the lease, which would make a writer wait as long as the copy
    takes; it is kept only if the original was the delivered version before and after it.
    """
    partial = target.with_name(f".{target.name}{COPYING}")
    try:
        copied = _copy_version(source, partial, version)
        if copied:
            os.rename(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    if not copied:
        log.info("%s changed after it was sent; leaving it in place", relpath)
        return False
    try:
        with guard_against_writers(source) as guard:
            if Version.of(guard.stat) == version and _remove(source, guard, relpath):
                log.info("moved %s to %s after delivery", relpath, target)
                return True
    except WriterPresent as busy:
        log.info("%s; it is moved once the writer lets go", busy)
    target.unlink()  # the original stays, so the copy must not stay beside it
    return False


def _copy_version(source: Path, copy: Path, version: Version) -> bool:
    """Copy `source` to `copy` durably; False if it was not `version` throughout."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as original:
        if Version.of(os.fstat(fd)) != version:
            return False
        with open(copy, "wb") as out:
            shutil.copyfileobj(original, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        if Version.of(os.fstat(fd)) != version:
            return False
        os.utime(copy, ns=(os.fstat(fd).st_atime_ns, version.mtime_ns))
    return True


def _still_ours(path: Path, guard: WriterGuard) -> bool:
    """True if `path` is the guarded file and no process began to open it for writing."""
    st = path.lstat()
    same = (st.st_dev, st.st_ino) == (guard.stat.st_dev, guard.stat.st_ino)
    return same and not guard.intruded()


def _put_back(moved: Path, source: Path, relpath: str, why: str) -> None:
    """Undo a rename without overwriting: link back under the old name, then drop the new;
    `why` completes the log line."""
    try:
        os.link(moved, source)
    except FileExistsError:
        log.error(
            "%s was replaced while it was handed off; the delivered file is %s", relpath, moved
        )
        return
    os.unlink(moved)
    log.info("%s %s", relpath, why)


def _free_name(target: Path) -> Path:
    """`target`, or `stem~N.suffix` beside it when sent/ already holds that name."""
    candidate, number = target, 0
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = target.with_name(f"{target.stem}~{number}{target.suffix}")
    return candidate
