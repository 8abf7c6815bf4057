"""Tests for scanxfer.store on real files.

Mocks appear only for faults a test cannot produce for real: ENOSPC from write(), EIO from fsync(),
short writes, and a filesystem without hard links.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from scanxfer.errors import ExitCode, ScanxferError
from scanxfer.store import (
    PARTIAL_FOLDER,
    BadName,
    Busy,
    DigestMismatch,
    LeftoverPartial,
    NoSpace,
    Outcome,
    StorageIOError,
    Store,
    StoredFile,
    StoreError,
    StoreLimits,
    StoreSetupError,
)
from scanxfer.store import partial as partial_module
from scanxfer.store.partial import SIDECAR_MIN_SIZE, WRITE_BACK_STEP, PartialFile, partial_key

REPO = Path(__file__).resolve().parents[2]
LIMITS = StoreLimits(max_path_length=200, max_path_depth=4)
MTIME_NS = 1_700_000_000_123_456_789


def digest(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    return tmp_path / "incoming"


@pytest.fixture
def store(tmp_path: Path, incoming: Path) -> Store:
    return Store(incoming, tmp_path / "partial", LIMITS)


def receive(store: Store, relpath: str, data: bytes) -> StoredFile:
    """Receive a whole file in one go, as the receiver does for a fresh offer."""
    partial = store.open_partial(relpath, len(data), digest(data))
    partial.write(data[partial.offset :])
    return partial.commit(MTIME_NS)


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def fail_on_part_fds(func: Callable[..., object], err: int) -> Callable[..., object]:
    """Wrap an os function so it fails with ``err`` only on the store's .part files."""

    def failing(fd: int, *args: object) -> object:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            raise OSError(err, os.strerror(err))
        return func(fd, *args)

    return failing


# -- storing -------------------------------------------------------------------------------------


def test_store_and_commit(store: Store, incoming: Path) -> None:
    data = payload(3 * 1024 * 1024 + 17)
    stored = receive(store, "scan_001.npy", data)
    assert stored == StoredFile("scan_001.npy", Outcome.STORED, len(data))
    assert (incoming / "scan_001.npy").read_bytes() == data
    assert (incoming / "scan_001.npy").stat().st_mtime_ns == MTIME_NS
    assert store.leftover_partials() == []
    assert os.listdir(store.partial_dir) == []


def test_empty_file(store: Store, incoming: Path) -> None:
    assert receive(store, "empty.npy", b"").outcome is Outcome.STORED
    assert (incoming / "empty.npy").read_bytes() == b""


def test_nested_dirs_are_created(store: Store, incoming: Path) -> None:
    stored = receive(store, "2024/run 7/é/scan.npy", b"abc")
    assert stored.path == "2024/run 7/é/scan.npy"
    assert (incoming / "2024" / "run 7" / "é" / "scan.npy").read_bytes() == b"abc"


def test_resume_after_release(store: Store, incoming: Path) -> None:
    data = payload(2_500_000)
    partial = store.open_partial("r/scan.npy", len(data), digest(data))
    assert partial.offset == 0
    partial.write(data[:1_000_000])
    partial.write(memoryview(data)[1_000_000:1_200_000])
    partial.release()
    assert [(p.path, p.size, p.held) for p in store.leftover_partials()] == [
        ("r/scan.npy", len(data), 1_200_000)
    ]

    resumed = Store(incoming, store.partial_dir, LIMITS).open_partial(
        "r/scan.npy", len(data), digest(data)
    )
    assert resumed.offset == 1_200_000
    resumed.write(data[resumed.offset :])
    assert resumed.commit(MTIME_NS).outcome is Outcome.STORED
    assert (incoming / "r" / "scan.npy").read_bytes() == data


def test_a_big_file_goes_to_disk_step_by_step_not_all_at_the_fsync(
    store: Store, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step is handed to the disk when it is written, and leaves the cache a step
    later; nothing is advised before it is written."""
    advised: list[tuple[int, int]] = []
    advise = os.posix_fadvise

    def watched(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        advised.append((offset, length))
        advise(fd, offset, length, advice)  # the real call: its effect is the point

    monkeypatch.setattr(os, "posix_fadvise", watched)
    data = payload(3 * WRITE_BACK_STEP + 12_345)
    partial = store.open_partial("big.npy", len(data), digest(data))
    view = memoryview(data)
    for start in range(0, len(data), 1 << 20):
        partial.write(view[start : start + (1 << 20)])
        assert all(offset + length <= partial.offset for offset, length in advised)
    step = WRITE_BACK_STEP
    assert advised == [(0, step), (0, 2 * step), (step, 2 * step)]
    assert partial.commit(MTIME_NS).outcome is Outcome.STORED
    assert (incoming / "big.npy").read_bytes() == data


def test_partial_longer_than_size_starts_over(store: Store, incoming: Path) -> None:
    data = payload(1000)
    partial = store.open_partial("a.npy", len(data), digest(data))
    partial.write(data[:600])
    partial.release()
    (part,) = store.partial_dir.glob("*.part")
    with part.open("ab") as f:
        f.write(b"x" * 1000)
    again = store.open_partial("a.npy", len(data), digest(data))
    assert again.offset == 0
    again.write(data)
    assert again.commit(MTIME_NS).outcome is Outcome.STORED
    assert (incoming / "a.npy").read_bytes() == data


def test_digest_mismatch_discards(store: Store, incoming: Path) -> None:
    partial = store.open_partial("bad.npy", 4, digest(b"good"))
    partial.write(b"evil")
    with pytest.raises(DigestMismatch, match="send the file again"):
        partial.commit(MTIME_NS)
    assert files_under(incoming) == []
    assert os.listdir(store.partial_dir) == []


def test_commit_before_all_bytes_keeps_partial(store: Store) -> None:
    partial = store.open_partial("x.npy", 10, digest(b"0123456789"))
    partial.write(b"01234")
    with pytest.raises(StoreError, match="5 of 10"):
        partial.commit(MTIME_NS)
    partial.release()
    assert [p.held for p in store.leftover_partials()] == [5]


def test_more_bytes_than_declared_discards(store: Store, incoming: Path) -> None:
    partial = store.open_partial("x.npy", 3, digest(b"abc"))
    with pytest.raises(StoreError, match="more bytes than"):
        partial.write(b"abcd")
    assert os.listdir(store.partial_dir) == []
    with pytest.raises(StoreError, match="closed"):
        partial.write(b"a")
    assert files_under(incoming) == []


# -- duplicates and clashes ----------------------------------------------------------------------


def test_duplicate_same_content_same_path(store: Store, incoming: Path) -> None:
    data = payload(5000)
    receive(store, "d/scan.npy", data)
    expected = StoredFile("d/scan.npy", Outcome.DUPLICATE, len(data))
    assert store.find_identical("d/scan.npy", len(data), digest(data)) == expected
    assert receive(store, "d/scan.npy", data) == expected
    assert files_under(incoming) == ["d/scan.npy"]
    assert os.listdir(store.partial_dir) == []


def test_find_identical_misses(store: Store) -> None:
    data = payload(100)
    assert store.find_identical("nope/scan.npy", 100, digest(data)) is None
    receive(store, "scan.npy", data)
    assert store.find_identical("scan.npy", 99, digest(data[:99])) is None
    assert store.find_identical("scan.npy", 100, digest(payload(100, seed=2))) is None


def test_different_content_is_kept_beside(store: Store, incoming: Path) -> None:
    first, second, third = payload(100, 1), payload(100, 2), payload(200, 3)
    assert receive(store, "d/scan.npy", first).outcome is Outcome.STORED
    assert receive(store, "d/scan.npy", second) == StoredFile(
        "d/scan~1.npy", Outcome.KEPT_BESIDE, 100
    )
    assert receive(store, "d/scan.npy", third).path == "d/scan~2.npy"
    assert (incoming / "d/scan.npy").read_bytes() == first
    assert (incoming / "d/scan~1.npy").read_bytes() == second
    assert (incoming / "d/scan~2.npy").read_bytes() == third

    expected = StoredFile("d/scan~1.npy", Outcome.DUPLICATE, 100)
    assert store.find_identical("d/scan.npy", 100, digest(second)) == expected
    assert receive(store, "d/scan.npy", second) == expected
    assert files_under(incoming) == ["d/scan.npy", "d/scan~1.npy", "d/scan~2.npy"]


@pytest.mark.parametrize(
    ("name", "clash"),
    [("a.tar.gz", "a.tar~1.gz"), ("README", "README~1"), (".hidden", ".hidden~1")],
)
def test_clash_names_use_last_suffix(store: Store, name: str, clash: str) -> None:
    receive(store, name, b"one")
    assert receive(store, name, b"two").path == clash


def test_directory_at_final_name_is_kept_beside(store: Store, incoming: Path) -> None:
    (incoming / "scan.npy").mkdir(parents=True)
    assert receive(store, "scan.npy", b"data").path == "scan~1.npy"


def test_changed_file_is_hashed_again(store: Store, incoming: Path) -> None:
    receive(store, "scan.npy", b"AAAA")
    assert store.find_identical("scan.npy", 4, digest(b"AAAA")) is not None
    (incoming / "scan.npy").write_bytes(b"BBBB")
    os.utime(incoming / "scan.npy", ns=(1, 1))
    assert store.find_identical("scan.npy", 4, digest(b"AAAA")) is None
    assert store.find_identical("scan.npy", 4, digest(b"BBBB")) is not None


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relpath", "rule"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("a//b.npy", "empty component"),
        ("a/b/", "empty component"),
        ("./a.npy", r"'\.' or '\.\.'"),
        ("a/../../b.npy", r"'\.' or '\.\.'"),
        ("..", r"'\.' or '\.\.'"),
        ("a\0b", "U\\+0000"),
        ("a\nb", "U\\+000A"),
        ("a\x1bb", "U\\+001B"),
        ("a\x7fb", "U\\+007F"),
        ("a\x85b", "U\\+0085"),
        ("dir\\scan.npy", "backslash"),
        ("a/b/c/d/e", "5 components"),
        ("é" * 101, "202 UTF-8 bytes"),
        ("bad\udcff.npy", "not valid UTF-8"),
    ],
)
def test_check_name_refuses(store: Store, relpath: str, rule: str) -> None:
    with pytest.raises(BadName, match=rule) as info:
        store.check_name(relpath)
    assert repr(relpath) in str(info.value)
    with pytest.raises(BadName):
        store.open_partial(relpath, 1, digest(b"x"))


def test_check_name_component_limit(tmp_path: Path) -> None:
    store = Store(tmp_path / "in", tmp_path / "part", StoreLimits(1000, 4))
    with pytest.raises(BadName, match="longer than 255"):
        store.check_name("a/" + "x" * 256)
    with pytest.raises(BadName, match="longer than 255"):
        store.check_name("é" * 128)


def test_check_name_accepts(tmp_path: Path) -> None:
    store = Store(tmp_path / "in", tmp_path / "part", StoreLimits(300, 4))
    assert store.check_name("a/b c/d/é.npy") == ("a", "b c", "d", "é.npy")
    assert store.check_name("x" * 255) == ("x" * 255,)
    assert store.check_name("...npy") == ("...npy",)


# -- symlinks planted in incoming ----------------------------------------------------------------


def test_symlinked_subdir_is_refused(store: Store, incoming: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (incoming / "sub").symlink_to(outside)
    with pytest.raises(BadName, match="symlink"):
        store.open_partial("sub/scan.npy", 3, digest(b"abc"))
    with pytest.raises(BadName, match="symlink"):
        store.find_identical("sub/scan.npy", 3, digest(b"abc"))
    assert list(outside.iterdir()) == []


def test_symlink_planted_before_commit(store: Store, incoming: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    partial = store.open_partial("a/deep/scan.npy", 3, digest(b"abc"))
    partial.write(b"abc")
    incoming.joinpath("a").symlink_to(outside)
    with pytest.raises(BadName, match="symlink"):
        partial.commit(MTIME_NS)
    assert list(outside.iterdir()) == []
    assert os.listdir(store.partial_dir) == []


def test_file_where_a_directory_is_needed(store: Store, incoming: Path) -> None:
    incoming.joinpath("a").write_bytes(b"keep me")
    with pytest.raises(BadName, match="is a file"):
        store.open_partial("a/scan.npy", 1, digest(b"x"))
    assert incoming.joinpath("a").read_bytes() == b"keep me"


@pytest.mark.parametrize("target_exists", [True, False])
def test_symlink_at_final_name(
    store: Store, incoming: Path, tmp_path: Path, target_exists: bool
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target.npy"
    if target_exists:
        target.write_bytes(b"secret")
    (incoming / "scan.npy").symlink_to(target)
    # Even content identical to the symlink's target is not a duplicate: links are not followed.
    assert store.find_identical("scan.npy", 6, digest(b"secret")) is None
    assert receive(store, "scan.npy", b"secret").path == "scan~1.npy"
    assert files_under(outside) == (["target.npy"] if target_exists else [])
    if target_exists:
        assert target.read_bytes() == b"secret"
    assert (incoming / "scan.npy").is_symlink()
    assert (incoming / "scan~1.npy").read_bytes() == b"secret"


# -- concurrency ---------------------------------------------------------------------------------


def test_busy_until_release_or_discard(store: Store) -> None:
    partial = store.open_partial("scan.npy", 3, digest(b"abc"))
    with pytest.raises(Busy, match="another connection"):
        store.open_partial("scan.npy", 3, digest(b"abc"))
    other = store.open_partial("scan.npy", 3, digest(b"xyz"))  # another file, another key
    other.discard()
    partial.write(b"a")
    partial.release()
    again = store.open_partial("scan.npy", 3, digest(b"abc"))
    assert again.offset == 1
    again.discard()
    assert store.open_partial("scan.npy", 3, digest(b"abc")).offset == 0


def test_eight_threads_commit_into_one_new_directory(store: Store, incoming: Path) -> None:
    barrier = threading.Barrier(8)
    results: dict[int, StoredFile | BaseException] = {}

    def worker(i: int) -> None:
        data = payload(200_000, seed=i)
        barrier.wait()
        try:
            results[i] = receive(store, f"run/a/b/scan_{i}.npy", data)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {
        i: StoredFile(f"run/a/b/scan_{i}.npy", Outcome.STORED, 200_000) for i in range(8)
    }
    for i in range(8):
        assert (incoming / f"run/a/b/scan_{i}.npy").read_bytes() == payload(200_000, seed=i)


def sealed_batch(store: Store, count: int) -> list[tuple[str, bytes, PartialFile]]:
    """`count` whole files, verified and stamped, waiting to be made durable together."""
    batch = []
    for i in range(count):
        data = payload(5_000 + i, seed=i)
        partial = store.open_partial(f"batch/scan_{i}.npy", len(data), digest(data))
        partial.write(data)
        partial.seal(MTIME_NS)
        batch.append((f"batch/scan_{i}.npy", data, partial))
    return batch


def test_a_batch_is_made_durable_by_one_syncfs_through_the_partial_opened_first(
    store: Store, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = sealed_batch(store, 4)
    calls: list[str] = []
    libc = partial_module._libc

    class Watched:
        """The real syncfs, noting which file it went through."""

        def syncfs(self, fd: int) -> int:
            calls.append(os.readlink(f"/proc/self/fd/{fd}"))
            return libc.syncfs(fd)

    def no_fsync(fd: int) -> None:
        raise AssertionError("a batch takes one syncfs, not an fsync per file")

    monkeypatch.setattr(partial_module, "_libc", Watched())
    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", no_fsync)
        store.sync_sealed([partial for _, _, partial in reversed(batch)])
    first_key = partial_key(batch[0][0], len(batch[0][1]), digest(batch[0][1]))
    assert calls == [str(store.partial_dir / f"{first_key}.part")]
    placed = [partial.place(sync_dir=False) for _, _, partial in batch]
    assert store.sync_placed(placed) == {}
    for relpath, data, _ in batch:
        assert (incoming / relpath).read_bytes() == data
        assert (incoming / relpath).stat().st_mtime_ns == MTIME_NS
    assert os.listdir(store.partial_dir) == []


def test_a_batch_of_one_is_fsynced(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    [(_, _, partial)] = sealed_batch(store, 1)
    synced: list[str] = []
    fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd))
    )
    store.sync_sealed([partial])
    assert len(synced) == 1 and synced[0].endswith(".part")


def test_a_failed_syncfs_drops_the_whole_batch(
    store: Store, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = sealed_batch(store, 3)

    class Failing:
        """syncfs reporting a writeback error, as Linux does since 5.8."""

        def syncfs(self, fd: int) -> int:
            ctypes.set_errno(errno.EIO)
            return -1

    monkeypatch.setattr(partial_module, "_libc", Failing())
    with pytest.raises(StorageIOError, match="making 3 received files durable"):
        store.sync_sealed([partial for _, _, partial in batch])
    assert os.listdir(store.partial_dir) == []
    assert files_under(incoming) == []
    # Dropped, not stuck: the sender's next offer of each starts afresh.
    relpath, data, _ = batch[0]
    assert store.open_partial(relpath, len(data), digest(data)).offset == 0


# -- faults --------------------------------------------------------------------------------------


def test_enospc_on_write(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    partial = store.open_partial("scan.npy", 10, digest(b"0123456789"))
    partial.write(b"01234")
    with monkeypatch.context() as patched:
        patched.setattr(os, "write", fail_on_part_fds(os.write, errno.ENOSPC))
        with pytest.raises(NoSpace, match="free some space"):
            partial.write(b"56789")
    assert os.listdir(store.partial_dir) == []
    assert store.open_partial("scan.npy", 10, digest(b"0123456789")).offset == 0  # not Busy


def test_short_writes_are_completed(
    store: Store, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    data = payload(100)
    assert receive(store, "scan.npy", data).outcome is Outcome.STORED
    assert (incoming / "scan.npy").read_bytes() == data


def test_eio_on_fsync(store: Store, incoming: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    partial = store.open_partial("d/scan.npy", 3, digest(b"abc"))
    partial.write(b"abc")
    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", fail_on_part_fds(os.fsync, errno.EIO))
        with pytest.raises(StorageIOError, match="journalctl"):
            partial.commit(MTIME_NS)
    assert files_under(incoming) == []
    assert os.listdir(store.partial_dir) == []


def test_without_hard_links_rename_never_overwrites(
    store: Store, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    assert receive(store, "scan.npy", b"one").outcome is Outcome.STORED
    assert receive(store, "scan.npy", b"two").path == "scan~1.npy"
    assert (incoming / "scan.npy").read_bytes() == b"one"
    assert (incoming / "scan~1.npy").read_bytes() == b"two"
    assert os.listdir(store.partial_dir) == []


# -- leftovers, setup, space ---------------------------------------------------------------------


def test_a_small_partial_is_named_only_when_interrupted(store: Store) -> None:
    small = store.open_partial("small.npy", 4, digest(b"abcd"))
    small.write(b"ab")
    assert not list(store.partial_dir.glob("*.meta"))  # most small files never need one
    small.release()
    assert [p.path for p in store.leftover_partials()] == ["small.npy"]
    big = store.open_partial("big.npy", SIDECAR_MIN_SIZE, digest(b"x" * SIDECAR_MIN_SIZE))
    assert len(list(store.partial_dir.glob("*.meta"))) == 2  # a big one is named at once
    big.discard()
    resumed = store.open_partial("small.npy", 4, digest(b"abcd"))
    resumed.write(b"cd")
    assert resumed.commit(MTIME_NS).outcome is Outcome.STORED
    assert os.listdir(store.partial_dir) == []


def test_leftover_and_stale_partials(store: Store) -> None:
    old = store.open_partial("old.npy", 10, digest(b"0123456789"))
    old.write(b"0123")
    old.release()
    (old_part,) = store.partial_dir.glob("*.part")
    os.utime(old_part, (1_000_000, 1_000_000))
    fresh = store.open_partial("fresh.npy", 5, digest(b"abcde"))
    fresh.write(b"ab")
    fresh.release()
    in_use = store.open_partial("in_use.npy", 3, digest(b"xyz"))
    for part in store.partial_dir.glob("*.part"):
        if part != old_part:
            os.utime(part)

    leftovers = store.leftover_partials()
    # A small file still arriving has no sidecar yet: it is named once interrupted.
    assert [(p.path, p.size, p.held) for p in leftovers] == [
        ("", -1, 0),
        ("fresh.npy", 5, 2),
        ("old.npy", 10, 4),
    ]
    assert leftovers[2].age_seconds > 3600
    assert leftovers[1].age_seconds < leftovers[2].age_seconds

    removed = store.remove_stale_partials(max_age_seconds=3600)
    assert [p.path for p in removed] == ["old.npy"]
    assert [p.path for p in store.leftover_partials()] == ["", "fresh.npy"]
    assert [p.path for p in store.remove_stale_partials(0)] == ["fresh.npy"]  # not in_use
    in_use.write(b"xyz")
    assert in_use.commit(MTIME_NS).outcome is Outcome.STORED


def interrupted(store: Store, relpath: str, data: bytes, held: int) -> PartialFile:
    """A partial of `data` holding its first `held` bytes, still claimed by its connection."""
    partial = store.open_partial(relpath, len(data), digest(data))
    partial.write(data[:held])
    return partial


def key(relpath: str, data: bytes) -> str:
    return partial_key(relpath, len(data), digest(data))


def on_disk(store: Store) -> set[str]:
    """The keys of every file in the partial area: bytes and sidecars alike."""
    return {name.split(".")[0] for name in os.listdir(store.partial_dir)}


def test_an_idle_partial_of_an_older_version_goes_when_a_new_one_opens(store: Store) -> None:
    interrupted(store, "run/scan.npy", b"old version", 3).release()
    interrupted(store, "run/other.npy", b"another file", 3).release()
    new = store.open_partial("run/scan.npy", 7, digest(b"new one"))
    assert new.drop_older_versions() == 1
    # The other path's partial stays; of this path only the new version is left.
    assert on_disk(store) == {
        key("run/other.npy", b"another file"),
        key("run/scan.npy", b"new one"),
    }
    assert new.drop_older_versions() == 0
    new.write(b"new one")
    assert new.commit(MTIME_NS).outcome is Outcome.STORED
    assert on_disk(store) == {key("run/other.npy", b"another file")}


def test_the_same_version_resumes_and_drops_nothing(store: Store) -> None:
    interrupted(store, "scan.npy", b"same", 2).release()
    again = store.open_partial("scan.npy", 4, digest(b"same"))
    assert again.offset == 2 and again.drop_older_versions() == 0


def test_a_partial_claimed_by_a_live_connection_is_kept_until_it_lets_go(store: Store) -> None:
    old = interrupted(store, "scan.npy", b"old version", 3)
    new = store.open_partial("scan.npy", 7, digest(b"new one"))
    assert new.drop_older_versions() == 0
    assert on_disk(store) == {key("scan.npy", b"old version"), key("scan.npy", b"new one")}
    new.write(b"new one")
    assert new.commit(MTIME_NS).outcome is Outcome.STORED
    # Its connection (one that had not noticed its sender was gone) ends after the new
    # version was stored: the old one could never resume.
    assert old.release() is False
    assert on_disk(store) == set()
    # With no newer version opened meanwhile, an interrupted partial is kept again.
    kept = interrupted(store, "scan.npy", b"old version", 3)
    assert kept.release() is True
    assert on_disk(store) == {key("scan.npy", b"old version")}


def test_older_versions_left_by_an_earlier_run_are_found_by_their_sidecars(
    store: Store, incoming: Path
) -> None:
    interrupted(store, "small.npy", b"tiny old", 3).release()  # named when interrupted
    big = payload(SIDECAR_MIN_SIZE + 5)
    interrupted(store, "big.npy", big, 1000).release()
    restarted = Store(incoming, store.partial_dir, LIMITS)
    small = restarted.open_partial("small.npy", 3, digest(b"new"))
    larger = restarted.open_partial("big.npy", len(big) + 1, digest(big + b"!"))
    assert small.drop_older_versions() == larger.drop_older_versions() == 1
    assert on_disk(restarted) == {key("small.npy", b"new"), key("big.npy", big + b"!")}


def test_a_partial_being_removed_does_not_count_as_a_newer_version(store: Store) -> None:
    interrupted(store, "scan.npy", b"stale one", 2).release()
    assert store.claims.claim(key("scan.npy", b"stale one"), None)  # as the stale cleanup does
    current = interrupted(store, "scan.npy", b"current", 2)
    assert current.drop_older_versions() == 0  # claimed by the cleanup, so not idle
    assert current.release() is True
    assert on_disk(store) == {key("scan.npy", b"stale one"), key("scan.npy", b"current")}


def test_leftover_without_sidecar(store: Store) -> None:
    (store.partial_dir / f"{'0' * 32}.part").write_bytes(b"12345")
    (leftover,) = store.leftover_partials()
    assert leftover == LeftoverPartial("", -1, 5, leftover.age_seconds)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    path = Path("/dev/shm") / f"scanxfer-test-{uuid.uuid4().hex}"
    yield path
    if path.exists():
        path.rmdir()


def test_partial_dir_on_another_filesystem(tmp_path: Path, shm_dir: Path) -> None:
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a different filesystem from tmp_path")
    with pytest.raises(StoreSetupError) as refused:
        Store(tmp_path / "incoming", shm_dir, LIMITS)
    assert str(refused.value) == (
        f"cannot store files: a file in partial_dir {shm_dir} cannot be moved into "
        f"{tmp_path / 'incoming'} (Invalid cross-device link: another filesystem, or another "
        "mount of the service's sandbox); leave partial_dir unset, so unfinished files are "
        f"kept in {tmp_path / 'incoming' / PARTIAL_FOLDER}"
    )
    assert refused.value.exit_code is ExitCode.STORAGE


@pytest.mark.parametrize("partial", ["incoming", "incoming/partial", "link/partial"])
def test_partial_dir_inside_incoming_is_refused(
    tmp_path: Path, incoming: Path, partial: str
) -> None:
    incoming.mkdir()
    (tmp_path / "link").symlink_to(incoming)
    with pytest.raises(StoreSetupError, match="leave partial_dir unset") as refused:
        Store(incoming, tmp_path / partial, LIMITS)
    # The receiver could not start; it exits as the README's table says for that.
    assert isinstance(refused.value, ScanxferError)
    assert refused.value.exit_code is ExitCode.STORAGE


def test_a_failure_with_one_file_is_a_failed_transfer(store: Store) -> None:
    with pytest.raises(BadName) as refused:
        store.check_name("../escape.npy")
    assert isinstance(refused.value, ScanxferError)
    assert refused.value.exit_code is ExitCode.FAILED


def test_partial_dir_beside_incoming_with_a_longer_name(tmp_path: Path, incoming: Path) -> None:
    store = Store(incoming, tmp_path / "incoming.partial", LIMITS)
    assert receive(store, "scan.npy", b"abc").outcome is Outcome.STORED


def test_free_bytes(store: Store) -> None:
    st = os.statvfs(store.incoming_dir)
    assert 0 < store.free_bytes() <= st.f_blocks * st.f_frsize


# -- a real crash --------------------------------------------------------------------------------

CHILD = """
import sys, time, random
from pathlib import Path
import xxhash
from scanxfer.store import Store, StoreLimits
data = random.Random(5).randbytes(int(sys.argv[3]))
store = Store(Path(sys.argv[1]), Path(sys.argv[2]), StoreLimits(200, 4))
partial = store.open_partial("c/scan.npy", len(data), xxhash.xxh3_128_digest(data))
partial.write(data[: len(data) // 2])
print("half", flush=True)
time.sleep(600)
"""


def test_sigkill_mid_file_then_resume(tmp_path: Path, incoming: Path) -> None:
    size = 3_000_001
    partial_dir = tmp_path / "partial"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(incoming), str(partial_dir), str(size)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "half\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert files_under(incoming) == []

    data = random.Random(5).randbytes(size)
    store = Store(incoming, partial_dir, LIMITS)
    partial = store.open_partial("c/scan.npy", size, digest(data))
    assert partial.offset == size // 2
    partial.write(data[partial.offset :])
    assert partial.commit(MTIME_NS).outcome is Outcome.STORED
    assert (incoming / "c" / "scan.npy").read_bytes() == data


def commit_unsynced(store: Store, relpath: str, data: bytes) -> StoredFile:
    partial = store.open_partial(relpath, len(data), digest(data))
    partial.write(data)
    return partial.commit(mtime_ns=1, sync_dir=False)


def test_group_commit_syncs_each_directory_once(
    store: Store, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    placed = [commit_unsynced(store, f"run/{i}.npy", payload(64, i)) for i in range(5)]
    placed.append(commit_unsynced(store, "other/x.npy", payload(64, 9)))
    synced_dirs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            synced_dirs.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    assert store.sync_placed(placed) == {}
    assert sorted(synced_dirs) == sorted(
        {(incoming / "run").stat().st_ino, (incoming / "other").stat().st_ino}
    )
    assert files_under(incoming) == sorted([*(f"run/{i}.npy" for i in range(5)), "other/x.npy"])


def test_the_folders_the_store_makes_are_fsynced_into_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file acknowledged in them hangs on those entries (issue 15)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    Store(tmp_path / "lab" / "incoming", None, LIMITS)
    assert {str(tmp_path), str(tmp_path / "lab")} <= set(synced), synced


def test_a_directory_found_in_place_is_fsynced_into_its_parent_once_before_a_file_goes_in(
    store: Store, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection may have just made it and not yet fsynced incoming (issue 15)."""
    (incoming / "run").mkdir()  # as a connection does, before its fsync of incoming
    synced_dirs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            synced_dirs.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    for index in range(2):
        receive(store, f"run/{index}.npy", payload(64, index))
    run, top = (incoming / "run").stat().st_ino, incoming.stat().st_ino
    assert synced_dirs.count(top) == 1, synced_dirs  # once per run, not once per file
    assert synced_dirs.count(run) == 2, synced_dirs  # each file's own directory fsync


def test_group_commit_withdraws_names_when_the_directory_fsync_fails(
    store: Store, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    placed = [commit_unsynced(store, f"run/{i}.npy", payload(64, i)) for i in range(3)]
    real_fsync = os.fsync

    def failing_dir_fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_dir_fsync)
    failures = store.sync_placed(placed)
    assert set(failures) == {stored.path for stored in placed}
    assert all(isinstance(error, StorageIOError) for error in failures.values())
    assert files_under(incoming) == []  # no ACK may rest on a name that might not survive


def test_a_deferred_digest_resumes_by_version_and_must_be_named_before_commit(
    store: Store,
) -> None:
    payload = b"0123456789"
    first = store.open_deferred("big.npy", len(payload), MTIME_NS)
    first.write(payload[:4])
    first.release()
    other_version = store.open_deferred("big.npy", len(payload), MTIME_NS + 1)
    assert other_version.offset == 0  # a different mtime is a different file
    other_version.discard()
    resumed = store.open_deferred("big.npy", len(payload), MTIME_NS)
    assert resumed.offset == 4
    resumed.write(payload[4:])
    with pytest.raises(DigestMismatch):  # never stored unverified
        resumed.commit(MTIME_NS)
    again = store.open_deferred("big.npy", len(payload), MTIME_NS)
    again.write(payload)
    again.expect(digest(payload))
    assert again.commit(MTIME_NS).outcome is Outcome.STORED
