"""The one home of scanxfer's user-facing errors and of the exit codes every command returns.

Every error a user may see derives from `ScanxferError`, whose message already says what to do
next, and carries the exit code it ends a command with.  `cli.main` maps them once; the
README's exit-status table and each command's `--help` are checked against `ExitCode` by a test.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ExitCode(enum.IntEnum):
    """What `scanxfer COMMAND` returns to the shell (and systemd sees as the service's status)."""

    OK = 0
    FAILED = 1
    # Rerunning the same command cannot help: the command line or a settings file is wrong.
    USAGE = 2
    UNREACHABLE = 3
    # The receiver's folders: what is wrong is on this host's disk, and the message says how to
    # fix it; a restart alone changes nothing.
    STORAGE = 4
    # 128 + SIGINT, as shells report a command Ctrl-C stopped.
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        """The words `--help` and the README's table give this status."""
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "a transfer, a verification or a change of keys failed",
    ExitCode.USAGE: "usage or configuration error",
    ExitCode.UNREACHABLE: "receiver unreachable, or the service could not start",
    ExitCode.STORAGE: "the receiver cannot store in its folders (the message says why)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def describe_exit_codes(codes: tuple[ExitCode, ...] = tuple(ExitCode)) -> str:
    """The `exit status:` block of a `--help` text, for `codes` in the order given."""
    lines = [f"  {int(code):<4} {code.meaning}" for code in codes]
    return "exit status:\n" + "\n".join(lines)


class ScanxferError(Exception):
    """A failure the user can act on; its message says how.  Subclasses set `exit_code`."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class UsageError(ScanxferError):
    """Options that parse one by one but do not make sense together."""

    exit_code = ExitCode.USAGE
