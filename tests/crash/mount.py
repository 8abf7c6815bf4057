"""The test side of the power-cut file system: mount it, run a program on it, cut the power."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

FUSE_MISSING = (
    "the crash tests need FUSE: /dev/fuse, fusermount3 and strace "
    "(apt-get install fuse3 libfuse3-3 strace, or bash tests/system/prerequisites.sh), "
    "and the mfusepy package (pip install -e '.[test]')"
)
_MOUNT_SECONDS = 30


def require_fuse() -> None:
    """Fail, not skip, where FUSE is missing: a skipped crash test proves nothing."""
    missing = not os.path.exists("/dev/fuse") or not all(
        shutil.which(tool) for tool in ("fusermount3", "strace")
    )
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError):
        missing = True
    if missing:
        raise AssertionError(FUSE_MISSING)


def is_mounted(path: Path) -> bool:
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    return any(line.split(" ")[1:2] == [str(path)] for line in mounts if line)


class PowerCutMount:
    """ROOT/live mounted at ROOT/mnt by `powercut`; `cut` leaves the survivor in ROOT/live.

    `live` may be filled before `mount`: what is there then is durable.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.live = root / "live"
        self.mnt = root / "mnt"
        self.fifo = root / "strace.fifo"
        self.live.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        if not self.fifo.exists():
            os.mkfifo(self.fifo)
        self.daemon: subprocess.Popen[str] | None = None
        self.frozen = False
        self.frozen_before = ""  # the operation a freeze by count stopped
        self.syncs_before_cut = 0

    def mount(self, freeze_at: int = 0, freeze_on: str = "") -> None:
        """Mount; freeze by itself before the `freeze_at`-th request (of `freeze_on` only)."""
        self.frozen, self.frozen_before = False, ""
        log = (self.root / "powercut.log").open("a")
        self.daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.crash.powercut",
                str(self.root),
                str(self.mnt),
                "--strace",
                str(self.fifo),
                "--freeze-at",
                str(freeze_at),
                "--freeze-on",
                freeze_on,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        log.close()
        self._expect("ready")
        deadline = time.monotonic() + _MOUNT_SECONDS
        while not is_mounted(self.mnt):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"powercut did not mount: {self._log_tail()}")
            time.sleep(0.05)

    def traced(self, argv: list[str]) -> list[str]:
        """`argv` under strace, which tells the file system of each syncfs and sync."""
        return [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=syncfs,sync",
            "-e",
            "signal=none",
            "-o",
            str(self.fifo),
            *argv,
        ]

    def _command(self, command: str, answer: str | None = None) -> str:
        assert self.daemon is not None and self.daemon.stdin is not None
        self.daemon.stdin.write(command + "\n")
        self.daemon.stdin.flush()
        return self._expect(answer)

    def _expect(self, answer: str | None) -> str:
        assert self.daemon is not None and self.daemon.stdout is not None
        line = self.daemon.stdout.readline().strip()
        if answer is not None and line != answer:
            raise AssertionError(f"powercut answered {line!r}, not {answer!r}: {self._log_tail()}")
        return line

    def count(self) -> int:
        return int(self._command("count"))

    def syncs(self) -> int:
        """syncfs and sync calls seen since the mount (through strace)."""
        return int(self._command("syncs"))

    def freeze(self) -> None:
        """Handle no more requests, from now (or from the request given to `mount`)."""
        if not self.frozen:
            self._command("freeze", "frozen")
            self.frozen = True

    def poll_frozen(self, timeout: float = 0.0) -> bool:
        """Whether the request given by `mount(freeze_at=...)` has come and frozen it."""
        assert self.daemon is not None and self.daemon.stdout is not None
        if not self.frozen and select.select([self.daemon.stdout], [], [], timeout)[0]:
            answer = self._expect(None)
            if not answer.startswith("frozen before "):
                raise AssertionError(f"powercut answered {answer!r}: {self._log_tail()}")
            self.frozen, self.frozen_before = True, answer.removeprefix("frozen before ")
        return self.frozen

    def cut(self) -> None:
        """Drop what was not durable (the file system must be frozen) and unmount."""
        self.syncs_before_cut = self.syncs()
        self._command("cut", "cut")
        self.unmount()

    def unmount(self) -> None:
        if is_mounted(self.mnt):
            result = subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", str(self.mnt)], check=False)
        if self.daemon is not None:
            with contextlib.suppress(ProcessLookupError):
                self.daemon.kill()
            self.daemon.wait(30)
            for stream in (self.daemon.stdin, self.daemon.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self.daemon = None

    def _log_tail(self) -> str:
        return (self.root / "powercut.log").read_text()[-3000:]


@contextlib.contextmanager
def powercut_mount(root: Path) -> Iterator[PowerCutMount]:
    """A PowerCutMount unmounted whatever happens (mount it inside)."""
    require_fuse()
    fs = PowerCutMount(root)
    try:
        yield fs
    finally:
        fs.unmount()
