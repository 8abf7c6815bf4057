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
    # A transfer or a verification failed, or an action on keys could not be done.
    FAILED = 1
    # Usage or settings error: rerunning the same command cannot help.
    USAGE = 2
    # The receiver could not be reached, or the service could not start.
    UNREACHABLE = 3
    # Ctrl-C: 128 + SIGINT, as shells report it.
    INTERRUPTED = 130


class ScanxferError(Exception):
    """A failure the user can act on; its message says how.  Subclasses set `exit_code`."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class UsageError(ScanxferError):
    """Options that parse one by one but do not make sense together."""

    exit_code = ExitCode.USAGE
