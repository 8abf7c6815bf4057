"""Does any process on this machine hold a scan open for writing, or mapped shared-writable?

Size, header and quiet time say a scan looks finished; only this says nobody still writes it.
Moving or deleting a scan is the sender's one irreversible act, so the question is asked again
right before it (``guard_against_writers``), answered in a way that holds writers off meanwhile.

The answer is a Linux read lease: the kernel grants one only if nothing has the inode open for
writing or mapped shared-writable (even after closing its fd). It takes microseconds, sees every
process (other users', other containers') and, while held, makes openers for writing and
truncaters wait. It needs the caller to own the file (or CAP_LEASE) and a filesystem with
leases; otherwise /proc is searched, which sees only the processes we may inspect.

Only regular files are checked: anything else raises OSError(EINVAL), as a vanished or
unreadable file raises its own OSError, because a FIFO or a device is no scan.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

# O_NONBLOCK: a FIFO named *.npy cannot hang us, and an open that would have to break
# someone's write lease (Samba serving the file to a client) fails with EAGAIN at once.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)
_PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread, which has no files


class WriterState(enum.Enum):
    FREE = "free"  # no process on this machine has it open for writing / mapped writable
    BUSY = "busy"  # some process does
    UNKNOWN = "unknown"  # cannot tell (see WriterCheck.detail)


@dataclass(frozen=True)
class WriterCheck:
    """The verdict, how it was reached ("lease" or "proc") and, for a user, who or why."""

    state: WriterState
    method: str
    detail: str  # BUSY: "pid N (comm)" when known, else ""; UNKNOWN: why, and what to do


class WriterPresent(Exception):
    """Raised by guard_against_writers when a process holds the file for writing."""

    def __init__(self, path: Path, who: str) -> None:
        self.path, self.who = path, who
        by = f" by {who}" if who else " by another process"
        super().__init__(f"{path} is open for writing or mapped writable{by}: it is still in use")


@dataclass(frozen=True)
class WriterGuard:
    """What guard_against_writers yields: an fd of the file, held as long as the guard is.

    ``check`` is the verdict reached on entry: FREE by lease when ``protected``, else the
    /proc search's FREE or UNKNOWN (its detail says why no lease could be taken).
    """

    fd: int
    stat: os.stat_result
    protected: bool
    check: WriterCheck

    def intruded(self) -> bool:
        """True once a process has begun opening the file for writing or truncating it.

        Such a process waits in the kernel until the guard ends (or lease-break-time runs
        out), and meanwhile F_GETLEASE reports the lease's target, F_UNLCK, not F_RDLCK.
        """
        return self.protected and fcntl.fcntl(self.fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK


def check_writers(path: Path) -> WriterCheck:
    """Is ``path`` free of writers right now?  The lease, if one is taken, is held for
    microseconds only: a writer opening the file meanwhile just waits that long."""
    return _check(path, try_lease=True)


@contextmanager
def guard_against_writers(path: Path) -> Iterator[WriterGuard]:
    """Hold writers off ``path`` while the caller renames or deletes it; keep the body short.

    Raises WriterPresent if a writer holds the file. With a lease (``protected``) any new
    opener for writing waits until the guard ends: hence quick acts only, and ``intruded()``
    just before the irreversible one. Without a lease the guard only records the /proc search.
    """
    try:
        fd = _open_regular(path)
    except BlockingIOError:
        raise WriterPresent(path, "") from None  # a write lease: see _OPEN_FLAGS
    check = WriterCheck(WriterState.UNKNOWN, "lease", "")
    try:
        check = _decide(fd, try_lease=True)
        if check.state is WriterState.BUSY:
            raise WriterPresent(path, check.detail)
        yield WriterGuard(fd, os.fstat(fd), _leased(check), check)
    finally:
        _close(fd, leased=_leased(check))


def _check(path: Path, *, try_lease: bool) -> WriterCheck:
    """check_writers, the lease skippable: tests and make bench time the /proc search alone."""
    try:
        fd = _open_regular(path)
    except BlockingIOError:
        return WriterCheck(WriterState.BUSY, "lease", "")  # a write lease: see _OPEN_FLAGS
    check = WriterCheck(WriterState.UNKNOWN, "lease", "")
    try:
        check = _decide(fd, try_lease=try_lease)
    finally:
        _close(fd, leased=_leased(check))
    return check


def _open_regular(path: Path) -> int:
    fd = os.open(path, _OPEN_FLAGS)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file, so not a scan", str(path))
    return fd


def _leased(check: WriterCheck) -> bool:
    return check.method == "lease" and check.state is WriterState.FREE


def _decide(fd: int, *, try_lease: bool) -> WriterCheck:
    """FREE by lease (left held for the caller to release), BUSY, or the /proc verdict."""
    failure = _take_lease(fd) if try_lease else None
    if try_lease and failure is None:
        return WriterCheck(WriterState.FREE, "lease", "")
    st = os.fstat(fd)
    if failure == errno.EAGAIN:
        return WriterCheck(WriterState.BUSY, "lease", _search(st)[0] or "")
    writer, unseen = _search(st)
    if writer is not None:
        return WriterCheck(WriterState.BUSY, "proc", writer)
    if unseen:
        return WriterCheck(WriterState.UNKNOWN, "proc", _why_unknown(st, failure))
    return WriterCheck(WriterState.FREE, "proc", "")


def _take_lease(fd: int) -> int | None:
    """Take a read lease on ``fd``; None on success, else the errno (EAGAIN: a writer)."""
    # A lease break signals the holder, by default with SIGIO, whose default action kills
    # the process. SIGURG's default action is to ignore it, so no handler is needed and a
    # writer knocking while the lease is held costs nothing but its wait.
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as error:
        return error.errno
    return None


def _close(fd: int, *, leased: bool) -> None:
    """Give the lease back (closing would too; this says so) and close, whatever happens."""
    try:
        if leased:
            with suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    finally:
        os.close(fd)


def _search(st: os.stat_result) -> tuple[str | None, int]:
    """One pass over /proc: the first writer found ("pid N (comm)") and how many processes
    could not be inspected. Processes that end during the pass are skipped."""
    unseen = 1 if _pids_hidden() else 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if _examine(entry.path, st):
                return f"pid {entry.name} ({_comm(entry.path)})", unseen
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended during the pass
        except PermissionError:  # another user's, and we are not root
            if _holds_files(entry.path):
                unseen += 1
    return None, unseen


def _examine(proc: str, st: os.stat_result) -> bool:
    """Whether one process writes the file: through an fd, or a shared writable mapping.
    Only the fds of processes we may inspect are looked at (PermissionError otherwise)."""
    for fd in os.listdir(f"{proc}/fd"):
        if _same_file(f"{proc}/fd/{fd}", st) and _opened_for_writing(f"{proc}/fdinfo/{fd}"):
            return True
    with open(f"{proc}/maps") as maps:
        return any(_maps_writer(line, st) for line in maps)


def _same_file(link: str, st: os.stat_result) -> bool:
    try:
        target = os.stat(link)  # follows the magic link to the open file itself
    except OSError:
        return False  # closed meanwhile, or not a file we can stat
    return (target.st_ino, target.st_dev) == (st.st_ino, st.st_dev)


def _opened_for_writing(fdinfo: str) -> bool:
    try:
        with open(fdinfo) as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in _WRITE_MODES
    except OSError:
        pass  # closed meanwhile
    return False


def _maps_writer(line: str, st: os.stat_result) -> bool:
    """A /proc/PID/maps line "start-end perms offset major:minor inode path" mapping the
    file shared and writable: it keeps the file writable after its fd is closed."""
    fields = line.split(maxsplit=5)
    if len(fields) < 5 or fields[4] != str(st.st_ino) or not fields[1].endswith("s"):
        return False
    major, _, minor = fields[3].partition(":")
    same_dev = (int(major, 16), int(minor, 16)) == (os.major(st.st_dev), os.minor(st.st_dev))
    return same_dev and "w" in fields[1]


def _holds_files(proc: str) -> bool:
    """False for kernel threads and zombies, which cannot be writers though we may not look."""
    try:
        fields = Path(f"{proc}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False  # gone
    return fields[0] != "Z" and not int(fields[6]) & _PF_KTHREAD


def _pids_hidden() -> bool:
    """/proc mounted with hidepid= hides other users' processes from a non-root user
    altogether: we would not even know there are processes we cannot inspect."""
    if os.geteuid() == 0:
        return False
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == "/proc" and fields[2] == "proc":
            options = dict(o.partition("=")[::2] for o in fields[3].split(","))
            return options.get("hidepid", "0") not in ("0", "off")
    return False


def _comm(proc: str) -> str:
    try:
        return Path(f"{proc}/comm").read_text().strip()
    except OSError:
        return "ended"


def _why_unknown(st: os.stat_result, failure: int | None) -> str:
    """Why neither method could answer, and what the user can do about it."""
    others = "processes of other users cannot be inspected"
    if failure == errno.EACCES:
        return (
            f"the file belongs to uid {st.st_uid} and the sender runs as uid {os.geteuid()}, "
            f"so it may not take a lease, and {others}: run the sender as the instrument's "
            f"user (uid {st.st_uid}) so it can take a lease"
        )
    if failure == errno.EINVAL and Path("/proc/sys/fs/leases-enable").read_text().strip() == "0":
        return f"leases are off (fs.leases-enable = 0) and {others}: set fs.leases-enable = 1"
    if failure == errno.EINVAL:
        return (
            f"leases are not supported on this filesystem and {others}: keep the scan "
            "directory on a local filesystem (ext4, xfs, btrfs, tmpfs)"
        )
    if failure is not None:
        return f"no lease could be taken ({os.strerror(failure)}) and {others}"
    return others
