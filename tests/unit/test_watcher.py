"""Tests for scanxfer.watcher on real files, with real inotify and real polling.

Timeouts are generous upper bounds for waiting; no test asserts how fast anything happens.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib import format as npy_format

from scanxfer.npy import NPY_MAGIC, _itemsize, npy_complete
from scanxfer.watcher import CompletionWatcher, matches, scan

SETTLE = 0.2
WAIT = 10.0  # upper bound for something that must happen
QUIET = 1.5  # how long we wait to be satisfied that something does not happen
METHODS = ["inotify", "poll"]


def save(path: Path, array: np.ndarray, version: tuple[int, int] | None = None) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fp:
        npy_format.write_array(fp, array, version=version)
    return path.stat().st_size


def header_only(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fp:
        npy_format.write_array_header_1_0(fp, npy_format.header_data_from_array_1_0(array))


def write_in_pieces(path: Path, array: np.ndarray, pieces: int, pause: float) -> None:
    """Write like an instrument: header, then the data in pieces, all under the final name."""
    data = array.tobytes()
    step = -(-len(data) // pieces)
    with open(path, "wb") as fp:
        npy_format.write_array_header_1_0(fp, npy_format.header_data_from_array_1_0(array))
        fp.flush()
        for start in range(0, len(data), step):
            time.sleep(pause)
            fp.write(data[start : start + step])
            fp.flush()


def drain(watcher: CompletionWatcher, quiet: float = QUIET) -> list[PurePosixPath]:
    """Everything handed out until nothing came for ``quiet`` seconds (capped: a watcher that
    repeats itself forever must fail the test, not hang it)."""
    got: list[PurePosixPath] = []
    while len(got) < 20 and (item := watcher.get(timeout=quiet)) is not None:
        got.append(item)
    return got


# --- npy_complete ----------------------------------------------------------------------------


def test_complete_npy(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    save(path, np.arange(100, dtype=np.float32).reshape(10, 10))
    assert npy_complete(path)


def test_truncated_by_one_byte(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    size = save(path, np.arange(100, dtype=np.int16))
    os.truncate(path, size - 1)
    assert not npy_complete(path)


def test_one_byte_too_many(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    save(path, np.arange(10))
    with open(path, "ab") as fp:
        fp.write(b"\0")
    assert not npy_complete(path)


def test_header_only(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    header_only(path, np.zeros((4, 4)))
    assert not npy_complete(path)


def test_zero_size_array_is_complete_with_header_only(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    save(path, np.zeros((0, 3)))
    assert npy_complete(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x93NUM",
        b"not a numpy file at all, just text" * 10,
        NPY_MAGIC + b"\x01\x00" + struct.pack("<H", 20) + b"{'descr': '<f8', 'sh",
        NPY_MAGIC + b"\x01\x00" + struct.pack("<H", 16) + b"[1, 2, 3]       ",
        NPY_MAGIC + b"\x01\x00" + struct.pack("<H", 16) + b"__import__('os')",
        NPY_MAGIC + b"\x09\x00" + struct.pack("<H", 0),
        NPY_MAGIC + b"\x02\x00" + struct.pack("<I", 2**32 - 1) + b"{",
    ],
    ids=["empty", "short-magic", "text", "cut-header", "not-a-dict", "code", "v9", "huge-len"],
)
def test_garbage_is_not_complete(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "g.npy"
    path.write_bytes(content)
    assert not npy_complete(path)


def test_fortran_order(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    array = np.asfortranarray(np.arange(60, dtype=np.float64).reshape(3, 4, 5))
    size = save(path, array)
    assert b"'fortran_order': True" in path.read_bytes()[:128]
    assert npy_complete(path)
    os.truncate(path, size - 8)
    assert not npy_complete(path)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_header_versions(tmp_path: Path, version: tuple[int, int]) -> None:
    path = tmp_path / "v.npy"
    size = save(path, np.ones((7, 3), dtype=">u2"), version=version)
    assert path.read_bytes()[6:8] == bytes(version)
    assert npy_complete(path)
    os.truncate(path, size - 1)
    assert not npy_complete(path)


def test_object_dtype_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.npy"
    np.save(path, np.array([1, "a", None], dtype=object), allow_pickle=True)
    assert not npy_complete(path)


def test_non_npy_always_complete(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\x93NUMPY garbage")
    assert npy_complete(path)


def test_directory_named_npy_is_not_complete(tmp_path: Path) -> None:
    (tmp_path / "d.npy").mkdir()
    assert not npy_complete(tmp_path / "d.npy")


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=300), major=st.integers(0, 255), minor=st.integers(0, 255))
def test_npy_complete_never_raises(
    tmp_path_factory: pytest.TempPathFactory, tail: bytes, major: int, minor: int
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f.npy"
    path.write_bytes(NPY_MAGIC + bytes([major, minor]) + tail)
    assert npy_complete(path) in (True, False)


# --- matches and scan ------------------------------------------------------------------------


def test_matches_applies_ignore_to_every_component() -> None:
    assert matches(PurePosixPath("a/b/scan.npy"), ["*.npy"], [".*"])
    assert not matches(PurePosixPath(".cache/scan.npy"), ["*.npy"], [".*"])
    assert not matches(PurePosixPath("a/.hidden/scan.npy"), ["*.npy"], [".*"])
    assert not matches(PurePosixPath("a/.scan.npy"), ["*.npy"], [".*"])
    assert not matches(PurePosixPath("a/scan.txt"), ["*.npy"], [])
    assert matches(PurePosixPath("tmp/scan.txt"), ["*.npy", "*.txt"], ["*.tmp"])
    assert not matches(PurePosixPath("x.tmp/scan.txt"), ["*.txt"], ["*.tmp"])


def test_scan_nested_ignored_and_sorted_by_mtime(tmp_path: Path) -> None:
    files = {
        "b.npy": 300,
        "sub/a.npy": 100,
        "sub/deeper/c.npy": 200,
        "sub/deeper/d.npy": 200,  # same mtime as c: name breaks the tie
        "sub/skip.txt": 50,
        ".hidden.npy": 10,
        ".partial/e.npy": 10,
        "sub/f.npy.tmp": 10,
    }
    for name, mtime in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    found = scan(tmp_path, ["*.npy"], [".*", "*.tmp"])
    assert found == [
        PurePosixPath("sub/a.npy"),
        PurePosixPath("sub/deeper/c.npy"),
        PurePosixPath("sub/deeper/d.npy"),
        PurePosixPath("b.npy"),
    ]


def test_scan_does_not_follow_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.npy").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "real.npy").write_bytes(b"x")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "link.npy").symlink_to(outside / "o.npy")
    assert scan(root, ["*.npy"], []) == [PurePosixPath("real.npy")]


def test_scan_missing_root_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan(tmp_path / "nope", ["*.npy"], [])


# --- CompletionWatcher -----------------------------------------------------------------------


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "scans"
    path.mkdir()
    return path


@pytest.fixture
def watcher(root: Path, method: str) -> Iterator[CompletionWatcher]:
    with CompletionWatcher(root, ["*.npy"], [".*"], SETTLE, method) as w:
        assert w.method == method
        yield w


def test_file_written_in_pieces_handed_out_once_when_complete(
    root: Path, watcher: CompletionWatcher
) -> None:
    array = np.random.default_rng(1).random((64, 1024))
    path = root / "scan_000001.npy"
    writer = threading.Thread(target=write_in_pieces, args=(path, array, 6, SETTLE / 4))
    writer.start()
    got = watcher.get(timeout=WAIT)
    size_when_handed_out = path.stat().st_size
    writer.join()
    assert got == PurePosixPath("scan_000001.npy")
    assert size_when_handed_out == path.stat().st_size
    assert np.array_equal(np.load(path, allow_pickle=False), array)
    assert drain(watcher) == []


def test_incomplete_npy_is_held_back_until_finished(root: Path, watcher: CompletionWatcher) -> None:
    array = np.arange(10_000, dtype=np.int32)
    data = array.tobytes()
    path = root / "slow.npy"
    with open(path, "wb") as fp:
        npy_format.write_array_header_1_0(fp, npy_format.header_data_from_array_1_0(array))
        fp.write(data[:-1])
        fp.flush()
        # Quiet for far longer than the settle time, yet one byte short: must not be handed out.
        assert watcher.get(timeout=QUIET) is None
        fp.write(data[-1:])
    assert watcher.get(timeout=WAIT) == PurePosixPath("slow.npy")
    assert drain(watcher) == []


def test_truncated_npy_never_handed_out(root: Path, watcher: CompletionWatcher) -> None:
    size = save(root / "bad.npy", np.zeros(1000))
    os.truncate(root / "bad.npy", size - 1)
    save(root / "good.npy", np.zeros(10))
    assert drain(watcher) == [PurePosixPath("good.npy")]


def test_preexisting_files_handed_out_oldest_first(root: Path, method: str) -> None:
    for name, mtime in [("new.npy", 3000), ("sub/old.npy", 1000), ("mid.npy", 2000)]:
        save(root / name, np.zeros(3))
        os.utime(root / name, ns=(mtime * 10**9, mtime * 10**9))
    save(root / ".hidden" / "x.npy", np.zeros(3))
    with CompletionWatcher(root, ["*.npy"], [".*"], SETTLE, method) as w:
        got = drain(w)
    assert got == [PurePosixPath(p) for p in ("sub/old.npy", "mid.npy", "new.npy")]


def test_file_in_new_subdirectory(root: Path, watcher: CompletionWatcher) -> None:
    (root / "run1" / "deep").mkdir(parents=True)
    save(root / "run1" / "deep" / "s.npy", np.ones(5))
    assert drain(watcher) == [PurePosixPath("run1/deep/s.npy")]


def test_file_moved_in_from_outside(tmp_path: Path, root: Path, watcher: CompletionWatcher) -> None:
    outside = tmp_path / "staging"
    outside.mkdir()
    save(outside / "m.npy", np.ones(5))
    save(outside / "dir" / "n.npy", np.ones(5))
    os.rename(outside / "m.npy", root / "m.npy")
    assert watcher.get(timeout=WAIT) == PurePosixPath("m.npy")
    os.rename(outside / "dir", root / "dir")
    assert drain(watcher) == [PurePosixPath("dir/n.npy")]


def test_rename_within_tree_hands_out_new_name(root: Path, watcher: CompletionWatcher) -> None:
    save(root / ".writing" / "r.npy", np.ones(5))  # ignored while under a hidden directory
    os.rename(root / ".writing" / "r.npy", root / "r.npy")
    assert drain(watcher) == [PurePosixPath("r.npy")]


def test_modified_file_handed_out_again(root: Path, watcher: CompletionWatcher) -> None:
    path = root / "again.npy"
    save(path, np.ones(5))
    assert watcher.get(timeout=WAIT) == PurePosixPath("again.npy")
    save(path, np.zeros(50))
    assert drain(watcher) == [PurePosixPath("again.npy")]


def test_ignored_and_unmatched_files_never_handed_out(
    root: Path, watcher: CompletionWatcher
) -> None:
    save(root / ".tmp.npy", np.ones(5))
    save(root / ".cache" / "c.npy", np.ones(5))
    (root / "notes.txt").write_text("hello")
    assert drain(watcher) == []


def test_root_spelled_with_dotdot(tmp_path: Path, root: Path, method: str) -> None:
    (tmp_path / "elsewhere").mkdir()
    spelled = tmp_path / "elsewhere" / ".." / root.name
    with CompletionWatcher(spelled, ["*.npy"], [], SETTLE, method) as w:
        save(root / "a.npy", np.ones(3))
        assert drain(w) == [PurePosixPath("a.npy")]


def test_symlinked_root_is_followed(tmp_path: Path, root: Path, method: str) -> None:
    """Only the root itself: a scan directory is often a link to a bigger disk."""
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    with CompletionWatcher(link, ["*.npy"], [], SETTLE, method) as w:
        save(root / "sub" / "a.npy", np.ones(3))
        assert drain(w) == [PurePosixPath("sub/a.npy")]


def test_auto_uses_inotify_on_linux(root: Path) -> None:
    with CompletionWatcher(root, ["*.npy"], [], SETTLE) as w:
        assert w.method == "inotify"


def test_missing_root_fails_at_start(tmp_path: Path, method: str) -> None:
    w = CompletionWatcher(tmp_path / "absent", ["*.npy"], [], SETTLE, method)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        w.start()


def test_unknown_method_rejected(root: Path) -> None:
    with pytest.raises(ValueError, match="poll"):
        CompletionWatcher(root, ["*.npy"], [], SETTLE, "fanotify")


def test_get_before_start_is_an_error(root: Path) -> None:
    with pytest.raises(RuntimeError, match="start"):
        CompletionWatcher(root, ["*.npy"], [], SETTLE).get(timeout=0)


def test_falls_back_to_polling_when_root_vanishes_and_returns(root: Path) -> None:
    with CompletionWatcher(root, ["*.npy"], [], SETTLE, "inotify") as w:
        root.rmdir()
        root.mkdir()
        save(root / "back.npy", np.ones(3))
        assert w.get(timeout=WAIT) == PurePosixPath("back.npy")
        assert w.method == "poll"


def test_settle_time_protects_files_without_a_header(root: Path, method: str) -> None:
    """Non-.npy files have only the settle time: pauses shorter than it must not split them."""
    path = root / "log.dat"
    pieces = [bytes([i]) * 4096 for i in range(8)]
    with CompletionWatcher(root, ["*.dat"], [], 1.0, method) as w, open(path, "wb") as fp:
        for piece in pieces:
            fp.write(piece)
            fp.flush()
            time.sleep(0.05)
        fp.close()
        # Handed out early, the file would come out again for its final version.
        assert drain(w) == [PurePosixPath("log.dat")]


@pytest.mark.parametrize(
    "dtype", ["<u2", "|b1", "<f8", ">f4", "<c16", "|u1", "<i8", "<U7", "<M8[ns]", "|V12", "<f2"]
)
def test_item_sizes_match_numpy(dtype: str) -> None:
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    assert _itemsize(descr) == np.dtype(dtype).itemsize


def test_object_and_invalid_dtypes_have_no_item_size() -> None:
    assert _itemsize("|O") is None
    assert _itemsize("<i16") is None
    assert _itemsize("nonsense") is None


def test_watching_plain_scans_does_not_import_numpy(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((4, 4), dtype=np.uint16))
    script = (
        "import sys; from pathlib import Path; from scanxfer.npy import npy_complete; "
        f"assert npy_complete(Path({str(tmp_path / 'a.npy')!r})); print('numpy' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    "descr",
    [
        "<,7",  # numpy's own descr parser raises SyntaxError on it (found by make fuzz)
        "<i" + "9" * 4400,  # more digits than int() converts
        "\\q",  # an invalid escape: Python warns about it while parsing
    ],
)
def test_garbage_descr_is_incomplete_not_a_crash(
    tmp_path: Path, descr: str, recwarn: pytest.WarningsRecorder
) -> None:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    path = tmp_path / "bad.npy"
    path.write_bytes(NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    assert npy_complete(path) is False
    # Python 3.11 calls an invalid escape a DeprecationWarning, 3.12 a SyntaxWarning.
    assert not [w for w in recwarn if issubclass(w.category, SyntaxWarning | DeprecationWarning)]


# --- writers: a file some process still writes is never complete --------------------------------

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


def test_an_in_place_change_with_the_mtime_set_back_is_handed_out_again(
    root: Path, watcher: CompletionWatcher
) -> None:
    path = root / "scan.npy"
    save(path, np.zeros(100))
    assert watcher.get(timeout=WAIT) == PurePosixPath("scan.npy")
    before = path.stat()
    save(path, np.ones(100))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert watcher.get(timeout=WAIT) == PurePosixPath("scan.npy")
    assert drain(watcher) == []


def test_reconsider_hands_out_a_judged_file_again(root: Path, watcher: CompletionWatcher) -> None:
    save(root / "scan.npy", np.zeros(10))
    assert watcher.get(timeout=WAIT) == PurePosixPath("scan.npy")
    assert watcher.get(timeout=QUIET) is None
    watcher.reconsider(PurePosixPath("scan.npy"))
    assert watcher.get(timeout=WAIT) == PurePosixPath("scan.npy")
    assert drain(watcher) == []
