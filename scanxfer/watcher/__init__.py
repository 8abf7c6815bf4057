"""Find scan files under the watched directory and decide when each one is complete.

An instrument writes a scan under its final name while it acquires, so "the file exists" says
nothing about "the file is finished". Three independent signals must agree before a file is
handed to the sender: it has been quiet for ``settle_seconds`` (no inotify event for it, and the
same size, mtime, ctime and inode when looked at again), no process on this machine holds it
open for writing or mapped writable (`writers`: catches writers that pause, preallocate or fill
a memory map), and -- for ``.npy`` files -- its size is exactly what its own header promises.

Who does what: `scan` finds the files, `events` turns inotify's notices into `FileEvents`
calls, `settle.SettlePolicy` decides on a clock when a file is judged and what a verdict means,
`readiness.assess` (with `writers`) gives the verdict, and `completion.CompletionWatcher`
wires them together with a thread and hands out the results.
"""

from .completion import DEFAULT_RESCAN_SECONDS, METHODS, CompletionWatcher
from .events import EventHandler, FileEvents
from .readiness import Condition, Readiness, assess
from .scan import ErrorHandler, Version, matches, scan
from .settle import BUSY_RECHECK_SECONDS, Clock, Judge, SettlePolicy
from .writers import (
    WriterCheck,
    WriterGuard,
    WriterPresent,
    WriterState,
    check_writers,
    guard_against_writers,
)

__all__ = [
    "BUSY_RECHECK_SECONDS",
    "DEFAULT_RESCAN_SECONDS",
    "METHODS",
    "Clock",
    "CompletionWatcher",
    "Condition",
    "ErrorHandler",
    "EventHandler",
    "FileEvents",
    "Judge",
    "Readiness",
    "SettlePolicy",
    "Version",
    "WriterCheck",
    "WriterGuard",
    "WriterPresent",
    "WriterState",
    "assess",
    "check_writers",
    "guard_against_writers",
    "matches",
    "scan",
]
