"""Start one atheris target: seed its corpus directory, then hand over to libFuzzer.

Each target runs as `python -m tests.fuzz.fuzz_NAME CORPUS_DIR [libFuzzer flags]`, and
`make fuzz` runs them all with a time limit.  Valid inputs go into the corpus first, so the
fuzzer starts from whole connections and real .npy headers instead of having to discover the
framing.  An exception escaping the target is a crash: libFuzzer saves the input under
-artifact_prefix and exits non-zero.  Given that file instead of a directory, a target runs
that one input again.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

try:
    import atheris
except ImportError:
    sys.exit(
        "atheris is not installed in this Python; run `make fuzz` (it installs it), or "
        "`.venv/bin/pip install -e '.[fuzz]'`"
    )

__all__ = ["atheris", "run"]

# Later flags win in libFuzzer, so a command line can override each of these.
DEFAULT_FLAGS = (
    "-timeout=10",  # one input running this long is a hang, reported as a crash
    "-rss_limit_mb=1024",  # memory sized by the input shows up as a crash, not a slow host
    "-print_final_stats=1",
)


def run(target: Callable[[bytes], None], seeds: Iterable[bytes], max_len: int) -> None:
    """Fuzz `target` with libFuzzer, starting from `seeds`, with inputs up to `max_len` bytes.

    Does not return: libFuzzer ends the process, with status 0 only if nothing crashed.
    """
    inputs = [Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")]
    if not inputs:
        sys.exit(f"usage: python -m {_module_name()} CORPUS_DIR|CRASH_FILE [libFuzzer flags]")
    if not inputs[0].is_file():  # a file is one input to replay, not a corpus to seed
        inputs[0].mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            # libFuzzer names corpus files by the SHA-1 of their content: no duplicates.
            (inputs[0] / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    argv = [sys.argv[0], *DEFAULT_FLAGS, f"-max_len={max_len}", *sys.argv[1:]]
    atheris.Setup(argv, target)
    atheris.Fuzz()


def _module_name() -> str:
    main = sys.modules["__main__"]
    return getattr(main.__spec__, "name", None) or "tests.fuzz.fuzz_NAME"
