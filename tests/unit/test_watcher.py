"""Tests for scanxfer.watcher: finding scans, watchdog's events, and CompletionWatcher on real
files with real inotify and real polling.

The watcher's decisions (quiet time, verdicts, versions) are tested on a fake clock in
test_settle.py; here smoke tests show the wiring: events and sweeps reach the policy and
complete files come out of get(). A later "marker" scan is the positive signal that nothing
else was owed: whatever earlier events would still hand out falls due before it. Timeouts
are generous upper bounds for waiting; no test asserts how fast anything happens.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import watchdog.events as wd
from numpy.lib import format as npy_format

from scanxfer.watcher import CompletionWatcher, EventHandler, matches, scan

SETTLE = 0.02
WAIT = 10.0  # upper bound for something that must happen
MARKER = "zz-marker.npy"  # sorts after every other name in a batch with the same mtime
METHODS = ["inotify", "poll"]
INOTIFY_ONLY = pytest.mark.parametrize("method", ["inotify"])


def save(path: Path, array: np.ndarray) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fp:
        npy_format.write_array(fp, array)
    return path.stat().st_size


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


def handed_out(watcher: CompletionWatcher, count: int) -> list[PurePosixPath]:
    """The next ``count`` files handed out; fails if one does not come within WAIT."""
    got = []
    for _ in range(count):
        item = watcher.get(timeout=WAIT)
        assert item is not None, f"only {got} handed out, {count} expected"
        got.append(item)
    return got


def assert_nothing_more(watcher: CompletionWatcher, root: Path) -> None:
    """The next file handed out is a marker written now, not one owed from before."""
    save(root / MARKER, np.zeros(3))
    assert watcher.get(timeout=WAIT) == PurePosixPath(MARKER)


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


# --- watchdog's events, as the watcher hears them ------------------------------------------


class Recorder:
    """A FileEvents that notes each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def file_active(self, path: bytes | str) -> None:
        self.calls.append(("file_active", os.fsdecode(path)))

    def file_gone(self, path: bytes | str) -> None:
        self.calls.append(("file_gone", os.fsdecode(path)))

    def dir_appeared(self, path: bytes | str) -> None:
        self.calls.append(("dir_appeared", os.fsdecode(path)))

    def dir_gone(self, path: bytes | str) -> None:
        self.calls.append(("dir_gone", os.fsdecode(path)))


def _if_known(name: str, *args: str) -> list[wd.FileSystemEvent]:
    """An event of a class only some watchdog versions have (none in 2.2, Debian bookworm's)."""
    return [getattr(wd, name)(*args)] if hasattr(wd, name) else []


WRITING_EVENTS = [
    wd.FileCreatedEvent("/r/a.npy"),
    wd.FileModifiedEvent("/r/a.npy"),
    wd.FileClosedEvent("/r/a.npy"),
    *_if_known("FileAttribEvent", "/r/a.npy"),
]
# Our own header check and the sender's reads raise these: they must not postpone a file.
READING_EVENTS = [
    *_if_known("FileOpenedEvent", "/r/a.npy"),
    *_if_known("FileClosedNoWriteEvent", "/r/a.npy"),
    wd.DirModifiedEvent("/r/d"),
]


@pytest.mark.parametrize("event", WRITING_EVENTS, ids=lambda e: type(e).__name__)
def test_writing_events_make_a_file_active(event: wd.FileSystemEvent) -> None:
    sink = Recorder()
    EventHandler(sink).dispatch(event)
    assert sink.calls == [("file_active", "/r/a.npy")]


@pytest.mark.parametrize("event", READING_EVENTS, ids=lambda e: type(e).__name__)
def test_reading_events_are_not_activity(event: wd.FileSystemEvent) -> None:
    sink = Recorder()
    EventHandler(sink).dispatch(event)
    assert sink.calls == []


@pytest.mark.parametrize(
    ("event", "calls"),
    [
        (wd.FileDeletedEvent("/r/a"), [("file_gone", "/r/a")]),
        (wd.FileMovedEvent("/r/a", "/r/b"), [("file_gone", "/r/a"), ("file_active", "/r/b")]),
        (wd.DirCreatedEvent("/r/d"), [("dir_appeared", "/r/d")]),
        (wd.DirDeletedEvent("/r/d"), [("dir_gone", "/r/d")]),
        (wd.DirMovedEvent("/r/d", "/r/e"), [("dir_gone", "/r/d"), ("dir_appeared", "/r/e")]),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, wd.FileSystemEvent) else "",
)
def test_moves_and_deletions_are_told_apart(
    event: wd.FileSystemEvent, calls: list[tuple[str, str]]
) -> None:
    sink = Recorder()
    EventHandler(sink).dispatch(event)
    assert sink.calls == calls


# --- CompletionWatcher on real files -------------------------------------------------------


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
    assert_nothing_more(watcher, root)


def test_preexisting_files_handed_out_oldest_first(root: Path, method: str) -> None:
    for name, mtime in [("new.npy", 3000), ("sub/old.npy", 1000), ("mid.npy", 2000)]:
        save(root / name, np.zeros(3))
        os.utime(root / name, ns=(mtime * 10**9, mtime * 10**9))
    save(root / ".hidden" / "x.npy", np.zeros(3))
    with CompletionWatcher(root, ["*.npy"], [".*"], SETTLE, method) as w:
        assert handed_out(w, 3) == [PurePosixPath(p) for p in ("sub/old.npy", "mid.npy", "new.npy")]
        assert_nothing_more(w, root)


def test_ignored_unmatched_and_truncated_files_never_handed_out(
    root: Path, watcher: CompletionWatcher
) -> None:
    save(root / ".tmp.npy", np.ones(5))
    save(root / ".cache" / "c.npy", np.ones(5))
    (root / "notes.txt").write_text("hello")
    size = save(root / "bad.npy", np.zeros(1000))
    os.truncate(root / "bad.npy", size - 1)
    assert_nothing_more(watcher, root)


def test_modified_file_handed_out_again(root: Path, watcher: CompletionWatcher) -> None:
    path = root / "again.npy"
    save(path, np.ones(5))
    assert watcher.get(timeout=WAIT) == PurePosixPath("again.npy")
    save(path, np.zeros(50))
    assert watcher.get(timeout=WAIT) == PurePosixPath("again.npy")
    assert_nothing_more(watcher, root)


@INOTIFY_ONLY
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
    assert_nothing_more(watcher, root)


@INOTIFY_ONLY
# watchdog 7 adds a watch for run1/deep twice (its walk of a new run1, and deep's own create
# event) and warns that it replaced the first: the same callback, so nothing is lost.
@pytest.mark.filterwarnings("ignore:Callback with id .* already exists:RuntimeWarning")
def test_file_in_new_subdirectory(root: Path, watcher: CompletionWatcher) -> None:
    (root / "run1" / "deep").mkdir(parents=True)
    save(root / "run1" / "deep" / "s.npy", np.ones(5))
    assert watcher.get(timeout=WAIT) == PurePosixPath("run1/deep/s.npy")
    assert_nothing_more(watcher, root)


@INOTIFY_ONLY
def test_file_moved_in_from_outside(tmp_path: Path, root: Path, watcher: CompletionWatcher) -> None:
    outside = tmp_path / "staging"
    outside.mkdir()
    save(outside / "m.npy", np.ones(5))
    save(outside / "dir" / "n.npy", np.ones(5))
    os.rename(outside / "m.npy", root / "m.npy")
    assert watcher.get(timeout=WAIT) == PurePosixPath("m.npy")
    os.rename(outside / "dir", root / "dir")  # inotify says nothing of the file inside
    assert watcher.get(timeout=WAIT) == PurePosixPath("dir/n.npy")
    assert_nothing_more(watcher, root)


@INOTIFY_ONLY
def test_rename_within_tree_hands_out_new_name(root: Path, watcher: CompletionWatcher) -> None:
    save(root / ".writing" / "r.npy", np.ones(5))  # ignored while under a hidden directory
    os.rename(root / ".writing" / "r.npy", root / "r.npy")
    assert watcher.get(timeout=WAIT) == PurePosixPath("r.npy")
    assert_nothing_more(watcher, root)


@INOTIFY_ONLY
def test_reconsider_hands_out_a_judged_file_again(root: Path, watcher: CompletionWatcher) -> None:
    save(root / "scan.npy", np.zeros(10))
    assert watcher.get(timeout=WAIT) == PurePosixPath("scan.npy")
    watcher.reconsider(PurePosixPath("scan.npy"))
    assert watcher.get(timeout=WAIT) == PurePosixPath("scan.npy")
    assert_nothing_more(watcher, root)


def test_root_spelled_with_dotdot(tmp_path: Path, root: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    spelled = tmp_path / "elsewhere" / ".." / root.name
    with CompletionWatcher(spelled, ["*.npy"], [], SETTLE, "inotify") as w:
        save(root / "a.npy", np.ones(3))
        assert w.get(timeout=WAIT) == PurePosixPath("a.npy")


def test_symlinked_root_is_followed(tmp_path: Path, root: Path) -> None:
    """Only the root itself: a scan directory is often a link to a bigger disk."""
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    with CompletionWatcher(link, ["*.npy"], [], SETTLE, "inotify") as w:
        save(root / "sub" / "a.npy", np.ones(3))
        assert w.get(timeout=WAIT) == PurePosixPath("sub/a.npy")


def test_falls_back_to_polling_when_root_vanishes_and_returns(root: Path) -> None:
    with CompletionWatcher(root, ["*.npy"], [], SETTLE, "inotify") as w:
        root.rmdir()
        root.mkdir()
        save(root / "back.npy", np.ones(3))
        assert w.get(timeout=WAIT) == PurePosixPath("back.npy")
        assert w.method == "poll"


def test_the_watcher_settles_on_the_clock_it_is_given(root: Path) -> None:
    """An hour of quiet on the injected clock, none on the wall's: the file is handed out."""
    now = [0.0]
    save(root / "a.npy", np.ones(3))
    with CompletionWatcher(root, ["*.npy"], [], 3600.0, clock=lambda: now[0]) as w:
        now[0] += 3600.0
        assert w.get(timeout=WAIT) == PurePosixPath("a.npy")


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
