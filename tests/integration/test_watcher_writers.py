"""CompletionWatcher against a writer in a process of its own that holds a complete-looking file.

Moved here from the unit tests because it needs a real writer process and real quiet time: the
file has full size and a valid header while another process still has it open for writing or
mapped writable, and only the writer check keeps it back. (The policy's side, looking again at
a file held by a writer, is tested on a fake clock in tests/unit/test_settle.py.) Timeouts are
generous upper bounds for waiting; no test asserts how fast anything happens.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from scanxfer.npy import npy_complete
from scanxfer.watcher import CompletionWatcher

SETTLE = 0.2
WAIT = 10.0  # upper bound for something that must happen
QUIET = 1.5  # how long we wait to be satisfied that something does not happen


def drain(watcher: CompletionWatcher) -> list[PurePosixPath]:
    """Everything handed out until nothing came for QUIET seconds (capped: a watcher that
    repeats itself forever must fail the test, not hang it)."""
    got: list[PurePosixPath] = []
    while len(got) < 20 and (item := watcher.get(timeout=QUIET)) is not None:
        got.append(item)
    return got


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "scans"
    path.mkdir()
    return path


@pytest.fixture(params=["inotify", "poll"])
def watcher(root: Path, request: pytest.FixtureRequest) -> Iterator[CompletionWatcher]:
    with CompletionWatcher(root, ["*.npy"], [".*"], SETTLE, request.param) as w:
        assert w.method == request.param
        yield w


HOLD_OPEN = """
import sys
import numpy as np
from numpy.lib import format as npy_format
path, mode = sys.argv[1], sys.argv[2]
array = np.arange(4096, dtype=np.int64)
if mode == "open":  # complete, and still open for writing
    handle = open(path, "wb")
    npy_format.write_array(handle, array)
    handle.flush()
else:  # preallocated through a memory map, half filled
    mapped = npy_format.open_memmap(path, mode="w+", dtype=np.int64, shape=array.shape)
    mapped[:2048] = array[:2048]
print("ready", flush=True)
sys.stdin.readline()
if mode == "open":
    handle.close()
else:
    mapped[2048:] = array[2048:]
    mapped.flush()
    del mapped
print("done", flush=True)
"""


@pytest.mark.parametrize("mode", ["open", "memmap"])
def test_a_file_still_held_by_its_writer_is_handed_out_only_when_released(
    root: Path, watcher: CompletionWatcher, mode: str
) -> None:
    """Full size and a valid header, yet still open or mapped writable: not complete."""
    path = root / "held.npy"
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline() == "ready\n"
        assert npy_complete(path)  # the header check alone would hand it out
        assert watcher.get(timeout=QUIET) is None
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "done\n"
        assert watcher.get(timeout=WAIT) == PurePosixPath("held.npy")
    finally:
        writer.kill()
        writer.wait()
    assert np.array_equal(np.load(path), np.arange(4096, dtype=np.int64))
    assert drain(watcher) == []
