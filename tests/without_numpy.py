"""Run scanxfer as on a Pi that has only the Debian package's dependencies: no numpy.

python3-numpy is only recommended by the package. The wrapper puts a finder first on
sys.meta_path that answers every `import numpy...` with ModuleNotFoundError, as a missing
package does, so any code path that still needs numpy fails where a test can see it.
"""

from __future__ import annotations

import sys

_WRAPPER = """
import sys


class NoNumpy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoNumpy())
"""

# The wrapper, then `scanxfer ARGS` (sys.argv[1:] of `python -c`).
_RUN_SCANXFER = _WRAPPER + "from scanxfer.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"


def scanxfer_argv(*args: str) -> list[str]:
    """The command line of `scanxfer ARGS` run with numpy hidden."""
    return [sys.executable, "-c", _RUN_SCANXFER, *args]


def python_argv(code: str) -> list[str]:
    """The command line of `python -c CODE` run with numpy hidden."""
    return [sys.executable, "-c", _WRAPPER + code]
