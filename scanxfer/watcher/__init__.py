"""Find scan files under the watched directory and decide when each one is complete.

An instrument writes a scan under its final name while it acquires, so "the file exists" says
nothing about "the file is finished". Two independent signals must agree before a file is handed
to the sender: it has been quiet for ``settle_seconds`` (no inotify event for it, or unchanged
size and mtime when polling), and -- for ``.npy`` files -- its size is exactly what its own header
promises. The header check catches writers that pause for longer than the settle time.
"""

from .completion import DEFAULT_RESCAN_SECONDS, METHODS, CompletionWatcher
from .npy import MAX_NPY_HEADER, NPY_MAGIC, npy_complete, npy_expected_size
from .scan import ErrorHandler, Version, matches, scan

__all__ = [
    "DEFAULT_RESCAN_SECONDS",
    "MAX_NPY_HEADER",
    "METHODS",
    "NPY_MAGIC",
    "CompletionWatcher",
    "ErrorHandler",
    "Version",
    "matches",
    "npy_complete",
    "npy_expected_size",
    "scan",
]
