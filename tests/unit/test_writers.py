"""Tests for scanxfer.watcher.writers with real processes holding real files.

Every writer, reader and mapping is a separate process that signals "ready" once it holds the
file, and is killed and reaped at the end of its test. "proc" runs the /proc search alone
(writers._check with try_lease=False), the fallback when no lease can be taken. Timeouts are
upper bounds for waiting; no test asserts how fast anything happens.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scanxfer.watcher import writers
from scanxfer.watcher.writers import (
    WriterCheck,
    WriterPresent,
    WriterState,
    check_writers,
    guard_against_writers,
)

WAIT = 10.0  # upper bound for something that must happen
METHODS = ["lease", "proc"]
NOBODY = 65534

# argv: path, mode. Holds the file as `mode` says, prints "ready", waits for stdin to close.
# Mappings are made through libc, not the mmap module, which keeps a dup of the fd: "mapped
# after the fd was closed" must really have no fd left.
HOLDER = """
import ctypes, fcntl, mmap, os, signal, sys
path, mode = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
def mapped(flags, prot):
    fd = os.open(path, flags)
    address = libc.mmap(None, 4096, prot, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    os.close(fd)
if mode == "write":
    fd = os.open(path, os.O_WRONLY)
elif mode == "read":
    fd = os.open(path, os.O_RDONLY)
elif mode == "closed":
    fd = os.open(path, os.O_WRONLY)
    os.write(fd, b"written, then closed")
    os.close(fd)
elif mode == "mmap":
    mapped(os.O_RDWR, mmap.PROT_READ | mmap.PROT_WRITE)
elif mode == "mmap-ro":
    mapped(os.O_RDONLY, mmap.PROT_READ)
elif mode == "write-lease":  # as Samba holds one for a client (an oplock)
    fd = os.open(path, os.O_RDONLY)
    fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("ready", flush=True)
sys.stdin.read()
"""


def scan_file(directory: Path, name: str = "scan.npy") -> Path:
    path = directory / name
    path.write_bytes(b"\x93NUMPY" + bytes(8186))
    return path


@contextmanager
def holding(path: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """A process that holds `path` as `mode` says until the block ends; then it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n", f"holder {mode} failed"
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT)


def check(path: Path, method: str) -> WriterCheck:
    result = check_writers(path) if method == "lease" else writers._check(path, try_lease=False)
    assert result.method == method
    return result


def every_process_inspectable() -> bool:
    """Whether this user may read every process's fds and maps (root usually may; a process
    with capabilities we lack, such as a sandbox's init, is the exception)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                os.listdir(f"{entry.path}/fd")
                Path(f"{entry.path}/maps").read_bytes()
            except PermissionError:
                return False
            except (FileNotFoundError, ProcessLookupError):
                continue
    return True


def no_writer(method: str) -> WriterState:
    """The verdict for a file without writers: the /proc search may only say FREE if it could
    look at every process."""
    if method == "lease" or every_process_inspectable():
        return WriterState.FREE
    return WriterState.UNKNOWN


def assert_busy_by(result: WriterCheck, proc: subprocess.Popen[str]) -> None:
    assert result.state is WriterState.BUSY
    assert result.detail.startswith(f"pid {proc.pid} ("), result.detail


@pytest.mark.parametrize("method", METHODS)
def test_only_the_closed_file_counts_as_free_of_writers(tmp_path: Path, method: str) -> None:
    written, mapped, closed = (scan_file(tmp_path, f"{n}.npy") for n in ("w", "m", "c"))
    with (
        holding(written, "write") as writer,
        holding(mapped, "mmap") as mapper,
        holding(closed, "closed"),
    ):
        assert not any(
            os.stat(f"/proc/{mapper.pid}/fd/{fd}").st_ino == mapped.stat().st_ino
            for fd in os.listdir(f"/proc/{mapper.pid}/fd")
        ), "the mapping process must hold no fd of the file"
        assert_busy_by(check(written, method), writer)
        assert_busy_by(check(mapped, method), mapper)
        assert check(closed, method).state is no_writer(method)


@pytest.mark.parametrize("mode", ["read", "mmap-ro"])
@pytest.mark.parametrize("method", METHODS)
def test_readers_and_read_only_mappings_are_no_writers(
    tmp_path: Path, method: str, mode: str
) -> None:
    path = scan_file(tmp_path)
    with holding(path, mode):
        assert check(path, method).state is no_writer(method)


@pytest.mark.parametrize("method", METHODS)
def test_free_again_once_the_writer_has_exited(tmp_path: Path, method: str) -> None:
    path = scan_file(tmp_path)
    with holding(path, "write") as writer:
        assert_busy_by(check(path, method), writer)
    assert check(path, method).state is no_writer(method)


def test_proc_search_gives_free_where_it_sees_every_process(tmp_path: Path) -> None:
    """In a PID namespace of its own every process is ours to inspect, so the /proc search
    must come to a FREE verdict (elsewhere a process we may not inspect can make it UNKNOWN)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a PID namespace")
    script = (
        "import json, subprocess, sys\n"
        "from pathlib import Path\n"
        "from scanxfer.watcher import writers\n"
        "holder, *paths = sys.argv[1:]\n"
        "procs = [subprocess.Popen([sys.executable, '-c', holder, p, m], stdin=subprocess.PIPE,"
        " stdout=subprocess.PIPE, text=True) for p, m in zip(paths, ['write', 'mmap', 'closed'])]\n"
        "assert all(p.stdout.readline() == 'ready\\n' for p in procs)\n"
        "states = [writers._check(Path(p), try_lease=False).state.value for p in paths]\n"
        "print(json.dumps(states))\n"
        "for p in procs: p.kill(); p.wait()\n"
    )
    paths = [str(scan_file(tmp_path, f"{n}.npy")) for n in ("w", "m", "c")]
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script]
    done = subprocess.run([*argv, HOLDER, *paths], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["busy", "busy", "free"]


@pytest.mark.parametrize("mode", ["write", "mmap"])
def test_guard_refuses_a_file_a_writer_holds(tmp_path: Path, mode: str) -> None:
    path = scan_file(tmp_path)
    with (
        holding(path, mode) as writer,
        pytest.raises(WriterPresent) as caught,
        guard_against_writers(path),
    ):
        pytest.fail("the guard let a held file through")
    assert str(path) in str(caught.value) and f"pid {writer.pid} (" in str(caught.value)


def test_a_write_lease_holder_counts_as_a_writer(tmp_path: Path) -> None:
    """Opening a file under someone's write lease would have to wait for them: O_NONBLOCK
    turns that into EAGAIN, which says a writer may be at work."""
    path = scan_file(tmp_path)
    with holding(path, "write-lease"):
        assert check_writers(path) == WriterCheck(WriterState.BUSY, "lease", "")
        with pytest.raises(WriterPresent, match="by another process"), guard_against_writers(path):
            pytest.fail("the guard let a leased file through")


def nonblocking_open_for_writing(path: Path) -> int:
    """Errno of an O_WRONLY|O_NONBLOCK open in another process (0: it opened). Under a lease
    such an open fails with EAGAIN instead of waiting, and starts the lease break."""
    script = (
        "import os, sys\n"
        "try:\n    os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK))\n"
        "except OSError as e:\n    print(e.errno)\nelse:\n    print(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=WAIT
    )
    return int(done.stdout)


def test_guard_holds_writers_off_and_lets_them_in_when_it_ends(tmp_path: Path) -> None:
    path = scan_file(tmp_path)
    with pytest.raises(RuntimeError), guard_against_writers(path) as guard:
        assert guard.protected and guard.check == WriterCheck(WriterState.FREE, "lease", "")
        assert (guard.stat.st_ino, guard.stat.st_dev) == (path.stat().st_ino, path.stat().st_dev)
        assert fcntl.fcntl(guard.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert not guard.intruded()
        assert nonblocking_open_for_writing(path) == errno.EAGAIN
        raise RuntimeError("the caller's act failed")
    assert nonblocking_open_for_writing(path) == 0
    with pytest.raises(OSError):
        os.fstat(guard.fd)  # closed, though the body raised


def wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize(
    "act", ["os.close(os.open(sys.argv[1], os.O_WRONLY))", "os.truncate(sys.argv[1], 0)"]
)
def test_intruded_when_a_process_starts_writing_under_the_guard(tmp_path: Path, act: str) -> None:
    path = scan_file(tmp_path)
    script = f"import os, sys\n{act}\nprint('done', flush=True)\n"
    with guard_against_writers(path) as guard:
        assert not guard.intruded()
        opener = subprocess.Popen(
            [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert wait_for(guard.intruded), "the opener never knocked"
            assert opener.poll() is None, "the opener got in while the lease was held"
        except BaseException:
            opener.kill()
            opener.communicate()
            raise
    try:
        out, _ = opener.communicate(timeout=WAIT)
    finally:
        opener.kill()
        opener.communicate()
    assert out == "done\n" and opener.returncode == 0


def test_a_fifo_named_npy_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from scanxfer.watcher.writers import check_writers, guard_against_writers\n"
        "path = Path(sys.argv[1])\n"
        "for attempt in (check_writers, lambda p: guard_against_writers(p).__enter__()):\n"
        "    try:\n        attempt(path)\n    except OSError as e:\n        print(e.errno)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(fifo)], capture_output=True, text=True, timeout=WAIT
    )
    assert done.stdout.split() == [str(errno.EINVAL)] * 2, done.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="scanxfer-writers-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def as_nobody(action: Callable[[], str]) -> str:
    """Run `action` in a forked child whose uids and gids are nobody's; return what it says."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                said = action()
            except BaseException as error:
                said = f"raised {error!r}"
            os.write(write_end, said.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as said_pipe:
        said = said_pipe.read()
    os.waitpid(pid, 0)
    return said


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="becomes another user: needs root")


@needs_root
def test_without_a_lease_the_proc_search_decides(shared_dir: Path) -> None:
    """A file root owns, checked by nobody: no lease (EACCES), root's processes out of sight."""
    path = scan_file(shared_dir)
    path.chmod(0o666)

    def unprotected_guard() -> str:
        with guard_against_writers(path) as guard:
            return json.dumps([guard.protected, guard.intruded(), guard.check.method])

    assert json.loads(as_nobody(unprotected_guard)) == [False, False, "proc"]
    state, method, detail = as_nobody(lambda: described(check_writers(path))).split("|")
    assert (state, method) == ("unknown", "proc")
    assert "uid 0" in detail and f"uid {NOBODY}" in detail, detail

    def own_writer() -> str:
        fd = os.open(path, os.O_WRONLY)
        try:
            me = f"pid {os.getpid()} ({Path('/proc/self/comm').read_text().strip()})"
            return f"{me}|{described(check_writers(path))}"
        finally:
            os.close(fd)

    me, state, method, detail = as_nobody(own_writer).split("|")
    assert (state, method, detail) == ("busy", "proc", me)


def described(result: WriterCheck) -> str:
    return f"{result.state.value}|{result.method}|{result.detail}"
