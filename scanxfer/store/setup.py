"""Can the receiver store where it is told to?  Asked at start, on reload and by `receive --check`.

Every file is written into the partial folder and then linked (or renamed) into the incoming
folder, so both must exist, be writable by the user the receiver runs as, and be one
filesystem *as this process sees it*.  The last part is checked by doing it: a probe file is
made in the partial folder and renamed into the incoming folder.  Comparing device numbers is
not enough: under the service's sandbox two bind mounts of one filesystem report the same
device, yet a rename between them fails with EXDEV.

Each failure becomes one `StoreSetupError` line naming the folder, the cause and the fix, so
that `journalctl -u scanxfer-receiver` says why the service did not start, not "I/O error"
once a file has crossed the network.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..sizes import human_size
from .errors import StoreSetupError
from .names import PARTIAL_FOLDER

# The drop-in that lifts the service's sandbox for another folder.
_ALLOW = "sudo systemctl edit scanxfer-receiver, add [Service] ReadWritePaths={path}"


@dataclass(frozen=True)
class Folders:
    """Where files arrive (`incoming`) and where they are kept until complete (`partial`)."""

    incoming: Path
    partial: Path
    # Missing parents are made only under this folder (the receiver's own state_dir): anywhere
    # else a missing parent is more likely an unmounted disk than a folder to create.
    own: Path = Path("/")

    @classmethod
    def of(cls, incoming: Path, partial: Path | None, own: Path = Path("/")) -> Folders:
        """`partial` None means the default: a hidden folder inside `incoming`."""
        incoming = Path(os.path.abspath(incoming))
        chosen = incoming / PARTIAL_FOLDER if partial is None else Path(os.path.abspath(partial))
        return cls(incoming, chosen, own)


def prepare(folders: Folders, min_free_space: int = 0) -> None:
    """Make the folders if they may be made, then check that files can be stored in them.

    Raises StoreSetupError with the cause and the fix.
    """
    with _named_errors():
        _prepare(folders, min_free_space)


def check(folders: Folders, min_free_space: int = 0) -> None:
    """`prepare` without making anything, for `receive --check` and a reload.

    A missing folder passes when it could be made; the rename is probed once both exist.
    """
    with _named_errors():
        _check(folders, min_free_space)


@contextmanager
def _named_errors() -> Iterator[None]:
    """An error no step expected (a folder on the way that cannot be entered, say) is told
    as what it is, about the path it happened on."""
    try:
        yield
    except OSError as exc:
        where = Path(exc.filename) if isinstance(exc.filename, str) else Path("?")
        raise StoreSetupError(f"cannot store files: {describe_error(exc, where)}") from None


def _prepare(folders: Folders, min_free_space: int) -> None:
    _make(folders.incoming, folders.own)
    try:
        _make(folders.partial, folders.own)
    except StoreSetupError:
        if folders.partial.parent != folders.incoming:
            raise
        # Inside the incoming folder: what is wrong is the incoming folder, not this one.
        _probe_writable(folders.incoming)
        raise
    _refuse_nesting(folders)
    _probe(folders)
    _check_space(folders.incoming, min_free_space)


def _check(folders: Folders, min_free_space: int) -> None:
    if not folders.incoming.is_dir():
        _check_makeable(folders.incoming, folders.own)
    if not folders.partial.is_dir() and folders.partial.parent != folders.incoming:
        _check_makeable(folders.partial, folders.own)
    _refuse_nesting(folders)
    if folders.partial.is_dir():
        _probe(folders)
    elif folders.incoming.is_dir():
        _probe_writable(folders.incoming)
    _check_space(_nearest(folders.incoming), min_free_space)


def _check_makeable(folder: Path, own: Path) -> None:
    _refuse_non_folder(folder)
    if not folder.is_relative_to(own) and not folder.parent.is_dir():
        raise StoreSetupError(_missing(folder))
    nearest = _nearest(folder)
    if not os.access(nearest, os.W_OK | os.X_OK, effective_ids=True):
        raise StoreSetupError(_unmakeable(OSError(errno.EACCES, "Permission denied"), folder))


def describe_error(exc: OSError, folder: Path) -> str:
    """What an error writing in `folder` means for the receiver, and what to do about it."""
    path = str(folder)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"user {_user()} may not write in {path} ({_owner_and_mode(folder)}); "
            f"give it the folder: sudo chown {_user()}: {path}"
        )
    if exc.errno == errno.EROFS:
        if _under_systemd():
            return (
                f"{path} is read-only to the service, whose sandbox allows writing only in "
                f"its state folder and in ReadWritePaths=; allow it: {_ALLOW.format(path=path)}"
            )
        return f"{path} is on a filesystem mounted read-only; remount it read-write"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk of {path} is full; free some space there"
    if exc.errno == errno.EIO:
        return (
            f"the disk of {path} reports an I/O error: it may be failing or was unplugged; "
            "journalctl -k shows the kernel's messages"
        )
    return f"cannot write in {path}: {exc.strerror or exc}"


def _make(folder: Path, own: Path) -> None:
    """Make `folder` (and its missing parents under `own`), each fsynced into its parent.

    Every file later acknowledged in it hangs on those entries: a power cut must not take
    the incoming folder, with all it holds, back with it.
    """
    if folder.is_dir():
        return
    _refuse_non_folder(folder)
    parents = folder.is_relative_to(own)
    if not parents and not folder.parent.is_dir():
        raise StoreSetupError(_missing(folder))
    try:
        atomic.make_dirs(folder, parents=parents)
    except OSError as exc:
        raise StoreSetupError(_unmakeable(exc, folder)) from None


def _unmakeable(exc: OSError, folder: Path) -> str:
    """Why `folder` could not be made.  Refused to this user (or, under the service, by its
    sandbox), the fix is to make it as root and give it away; else the error says it all."""
    sandboxed = exc.errno == errno.EROFS and _under_systemd()
    if exc.errno not in (errno.EACCES, errno.EPERM) and not sandboxed:
        return f"cannot make {folder}: {describe_error(exc, _nearest(folder))}"
    make = f"sudo mkdir -p {folder} && sudo chown {_user()}: {folder}"
    if sandboxed:
        make += f", then {_ALLOW.format(path=folder)}"
    return (
        f"cannot make {folder}: user {_user()} may not write in {_nearest(folder)}; make it: {make}"
    )


def _refuse_non_folder(folder: Path) -> None:
    """`folder`, or the first part of its path that is not a folder, is something else."""
    for part in (*reversed(folder.parents), folder):
        if part.is_dir():
            continue
        if part.exists() or part.is_symlink():
            what = "it is" if part == folder else f"{part} is"
            raise StoreSetupError(f"cannot store into {folder}: {what} not a folder")
        return


def _missing(folder: Path) -> str:
    """A folder whose parent is missing too: more likely an unmounted disk than a typo."""
    return (
        f"cannot store into {folder}: it does not exist, nor does {folder.parent}; is its disk "
        f"mounted? if it is on no disk of its own, make it: sudo mkdir -p {folder} "
        f"&& sudo chown {_user()}: {folder}"
    )


def _nearest(folder: Path) -> Path:
    """The nearest folder of `folder`'s path that exists."""
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def _refuse_nesting(folders: Folders) -> None:
    """A partial folder inside incoming must be the reserved one, which no offer may name."""
    partial, incoming = folders.partial.resolve(), folders.incoming.resolve()
    if partial.is_relative_to(incoming) and partial != incoming / PARTIAL_FOLDER:
        raise StoreSetupError(
            f"partial_dir {folders.partial} lies inside incoming_dir {folders.incoming}, so a "
            f"sender could offer a path that lands in it; leave partial_dir unset (unfinished "
            f"files are then kept in {folders.incoming / PARTIAL_FOLDER})"
        )


def _probe(folders: Folders) -> None:
    """Make a file in the partial folder and rename it into the incoming folder, as commits do."""
    name = f".scanxfer-probe-{os.getpid()}"
    made, placed = folders.partial / name, folders.incoming / name
    _probe_writable_as(made, _writable(folders))
    try:
        os.rename(made, placed)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(made)
        raise StoreSetupError(f"cannot store files: {_placing_error(exc, folders)}") from None
    with suppress(FileNotFoundError):
        os.unlink(placed)


def _writable(folders: Folders) -> Path:
    """The folder to name when the partial folder cannot be written: the one to allow or own."""
    if folders.partial == folders.incoming / PARTIAL_FOLDER:
        return folders.incoming
    return folders.partial


def _probe_writable(folder: Path) -> None:
    name = folder / f".scanxfer-probe-{os.getpid()}"
    _probe_writable_as(name, folder)
    with suppress(FileNotFoundError):
        os.unlink(name)


def _probe_writable_as(name: Path, blamed: Path) -> None:
    """Make the empty file `name`; if that fails, the error names the folder `blamed`."""
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise StoreSetupError(f"cannot store files: {describe_error(exc, blamed)}") from None


def _placing_error(exc: OSError, folders: Folders) -> str:
    if exc.errno != errno.EXDEV:
        return describe_error(exc, folders.incoming)
    return (
        f"a file in partial_dir {folders.partial} cannot be moved into {folders.incoming} "
        "(Invalid cross-device link: another filesystem, or another mount of the service's "
        "sandbox); leave partial_dir unset, so unfinished files are kept in "
        f"{folders.incoming / PARTIAL_FOLDER}"
    )


def free_space(folder: Path) -> int:
    """Bytes this user may still write on the filesystem of `folder`."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _check_space(incoming: Path, min_free_space: int) -> None:
    free = free_space(incoming)
    if free < min_free_space:
        raise StoreSetupError(
            f"cannot store into {incoming}: only {human_size(free)} is free on its disk, less "
            f"than min_free_space ({human_size(min_free_space)}); free some space there or "
            "lower min_free_space in the receiver's settings"
        )


def _owner_and_mode(folder: Path) -> str:
    try:
        st = folder.stat()
    except OSError:
        return "cannot be looked at"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return f"owner {owner}, mode {stat.S_IMODE(st.st_mode):04o}"


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _under_systemd() -> bool:
    """systemd sets INVOCATION_ID for each run of a unit: the sandbox is then in force."""
    return "INVOCATION_ID" in os.environ


def adopt_partials(former: Path, folders: Folders) -> tuple[int, int]:
    """Move the unfinished files of a former partial folder into `folders.partial`.

    Before 0.2 the partial folder defaulted to ``<state_dir>/partial``; its files can resume
    from the new place when they move by a rename.  One that cannot (another filesystem) is
    dropped: its sender sends it again from the start.  Returns (moved, dropped); the former
    folder is removed once empty.  Nothing happens unless the incoming folder exists.
    """
    if not former.is_dir() or not folders.incoming.is_dir():
        return 0, 0
    if former.resolve() == folders.partial.resolve():
        return 0, 0
    moved = dropped = 0
    with suppress(OSError):
        folders.partial.mkdir(exist_ok=True)
        for entry in os.scandir(former):
            try:
                os.rename(entry.path, folders.partial / entry.name)
                moved += 1
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                os.unlink(entry.path)
                dropped += 1
        former.rmdir()
    return moved, dropped


def service_owner(state_dir: Path) -> atomic.Owner | None:
    """The (uid, gid) the service runs as, when this is root and another user owns the state
    folder; None: this very process is the one to check as."""
    try:
        return atomic.state_owner(state_dir)
    except FileNotFoundError:
        return None  # a state folder still to be made: it will be ours


def check_as(owner: atomic.Owner | None, folders: Folders, min_free_space: int = 0) -> None:
    """`check`, done as `owner` (see `service_owner`): by a child process that runs as that
    user, or right here for None.

    `sudo scanxfer receive --check` runs as root, who may write anywhere: checked as root, a
    folder the service's own user cannot write would pass.  So root checks as the owner of
    the state folder, the user the service runs as.
    """
    if owner is None:
        check(folders, min_free_space)
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the owner, check, report the message (if any), exit
        os.close(read_end)
        status = _checked_as(owner, folders, min_free_space, write_end)
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        message = reader.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise StoreSetupError(message or f"the check as uid {owner[0]} failed")


def _checked_as(owner: atomic.Owner, folders: Folders, min_free_space: int, out: int) -> int:
    try:
        uid, gid = owner
        try:
            groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
        except KeyError:
            groups = [gid]
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        check(folders, min_free_space)
    except StoreSetupError as exc:
        os.write(out, str(exc).encode("utf-8"))
        return 1
    except BaseException as exc:  # the child must never return into the caller's code
        os.write(out, f"cannot check the folders as uid {owner[0]}: {exc}".encode())
        return 1
    return 0
