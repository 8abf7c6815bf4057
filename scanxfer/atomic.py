"""Whole-file writes that a crash cannot leave half done, for keys, certificates and settings;
and the one reader of the JSON state files they hold.

After Syncthing's lib/osutil/atomic.go: write a temporary file beside the target, fsync it,
rename it over the target, fsync the directory.  Readers see the old file or the new one,
never a mix, and after the directory fsync the new one survives a power cut.

The receiver's state belongs to its system user (`scanxfer`, via StateDirectory=), but an
administrator changes it with `sudo scanxfer keys ...`.  Files written as root would then be
unreadable by the daemon, so when root writes into a directory owned by someone else, new
files and directories are handed to that owner.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Owner = tuple[int, int]
T = TypeVar("T")


class Damaged(Exception):
    """A state file that exists but does not decode; `problem` says how, for the message."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def read_json(path: Path, decode: Callable[[object], T], missing: T) -> T:
    """`decode` of the JSON document in `path`, or `missing` when there is no such file.

    Raises Damaged when the file is no JSON or `decode` finds it wrong (KeyError for a
    missing field, ValueError or TypeError for a wrong one); other OSErrors pass through.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return missing
    try:
        return decode(json.loads(raw))
    except KeyError as exc:
        raise Damaged(f"the field {exc} is missing") from None
    except (ValueError, TypeError) as exc:
        raise Damaged(str(exc)) from None


def state_owner(state_dir: Path) -> Owner | None:
    """The (uid, gid) new files under `state_dir` must get, or None to keep our own.

    Only root can give files away, and only root needs to: anyone else writing there is
    either the owner or will be refused by the kernel anyway.
    """
    if os.geteuid() != 0:
        return None
    info = os.stat(state_dir)
    return None if info.st_uid == 0 else (info.st_uid, info.st_gid)


def permission_hint(path: Path | str, state_dir: Path) -> str:
    """The message for a permission error on `path`: who owns the state, and to use sudo."""
    try:
        uid = os.stat(state_dir).st_uid
    except OSError:
        owner = ""
    else:
        try:
            owner = f" ({pwd.getpwuid(uid).pw_name})"
        except KeyError:  # a uid with no name, e.g. from another system's backup
            owner = f" (uid {uid})"
    return (
        f"cannot access {path}: permission denied; run it with sudo, or as the user that "
        f"owns {state_dir}{owner}"
    )


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, parents: bool = True) -> None:
    """`mkdir -p`, with each folder it makes durable in its parent.

    A new folder's entry lives in its parent: without the parent's fsync a power cut can
    take the folder away with everything made durable inside it since (an ACKed scan, the
    keys, the TLS identity).  Folders that exist already are left alone.
    """
    missing = [folder for folder in (path, *path.parents) if not folder.is_dir()]
    path.mkdir(parents=parents, exist_ok=True)
    for folder in reversed(missing):
        # A parent one may write in but not read (mode 0300) cannot be opened to fsync:
        # rare, and no reason to refuse to start; the folder is then as durable as mkdir's.
        with contextlib.suppress(PermissionError):
            fsync_dir(folder.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: Path, mode: int, owner: Owner | None) -> None:
    """Create directory `path` (its parent must exist) with exactly `mode` and `owner`.

    An existing directory is left as it is: an administrator may have loosened it on
    purpose.  The mode is set after mkdir because mkdir's is filtered through the umask.
    """
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)
    fsync_dir(path.parent)


def write(
    path: Path,
    data: bytes,
    *,
    mode: int,
    owner: Owner | None = None,
    check: Callable[[Path], None] | None = None,
) -> None:
    """Replace `path` with `data`, atomically and durably, as a file of `mode` and `owner`.

    `check` runs on the finished temporary file before it replaces `path`; whatever it
    raises leaves `path` untouched.  The temporary file is created private (mkstemp makes it
    0600), so a secret is never readable by others, not even for a moment.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            if owner is not None:
                os.fchown(file.fileno(), *owner)
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if check is not None:
            check(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    fsync_dir(path.parent)
