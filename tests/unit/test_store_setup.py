"""Where the store keeps unfinished files, and how each storage failure is told."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from scanxfer.store import (
    PARTIAL_FOLDER,
    BadName,
    Folders,
    Store,
    StoreLimits,
    StoreSetupError,
    adopt_partials,
)
from scanxfer.store.errors import io_error
from scanxfer.store.setup import check, describe_error, prepare

LIMITS = StoreLimits(1024, 16)


def test_unfinished_files_are_kept_inside_the_incoming_folder_by_default(tmp_path: Path) -> None:
    store = Store(tmp_path / "scans", None, LIMITS)
    assert store.partial_dir == tmp_path / "scans" / PARTIAL_FOLDER
    assert store.partial_dir.is_dir()


@pytest.mark.parametrize("path", [PARTIAL_FOLDER, f"{PARTIAL_FOLDER}/x.npy", f"a/{PARTIAL_FOLDER}"])
def test_no_offer_may_name_the_partial_folder(tmp_path: Path, path: str) -> None:
    store = Store(tmp_path / "scans", None, LIMITS)
    with pytest.raises(BadName) as refused:
        store.check_name(path)
    assert str(refused.value) == (
        f"refused the path {path!r}: the name {PARTIAL_FOLDER} is kept for the receiver's "
        "unfinished files; rename it on the sender"
    )


def test_missing_parents_are_made_under_the_state_folder_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare(Folders.of(state / "a" / "incoming", None, own=state))
    assert (state / "a" / "incoming" / PARTIAL_FOLDER).is_dir()
    elsewhere = tmp_path / "usb" / "scans"
    with pytest.raises(StoreSetupError, match="is its disk mounted"):
        prepare(Folders.of(elsewhere, None, own=state))
    assert not (tmp_path / "usb").exists()


def test_a_file_on_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "disk").write_text("")
    folders = Folders.of(tmp_path / "disk" / "scans", None)
    for step in (prepare, check):
        with pytest.raises(StoreSetupError) as refused:
            step(folders)
        assert str(refused.value) == (
            f"cannot store into {tmp_path / 'disk' / 'scans'}: {tmp_path / 'disk'} is not a folder"
        )


def test_the_check_makes_nothing_and_leaves_no_probe(tmp_path: Path) -> None:
    check(Folders.of(tmp_path / "scans", None))
    assert list(tmp_path.iterdir()) == []
    prepare(Folders.of(tmp_path / "scans", None))
    check(Folders.of(tmp_path / "scans", None))
    assert os.listdir(tmp_path / "scans") == [PARTIAL_FOLDER]
    assert os.listdir(tmp_path / "scans" / PARTIAL_FOLDER) == []


def test_files_of_the_former_partial_folder_move_to_the_new_one(tmp_path: Path) -> None:
    former = tmp_path / "state" / "partial"
    former.mkdir(parents=True)
    (former / "k1.part").write_bytes(b"held bytes")
    (former / "k1.meta").write_text("{}")
    folders = Folders.of(tmp_path / "state" / "incoming", None)
    assert adopt_partials(former, folders) == (0, 0)  # incoming not made yet: nothing moves
    folders.incoming.mkdir()
    assert adopt_partials(former, folders) == (2, 0)
    assert (folders.partial / "k1.part").read_bytes() == b"held bytes"
    assert not former.exists()
    assert adopt_partials(former, folders) == (0, 0)


def test_the_partial_folder_in_use_is_not_adopted(tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "k.part").write_bytes(b"x")
    (tmp_path / "in").mkdir()
    assert adopt_partials(partial, Folders.of(tmp_path / "in", partial)) == (0, 0)
    assert (partial / "k.part").exists()


@pytest.mark.parametrize(
    ("number", "told"),
    [
        (
            errno.EACCES,
            "permission denied on the receiver while storing 'a.npy' (Permission denied); the "
            "receiver's user must own its storage folders (sudo chown scanxfer: FOLDER)",
        ),
        (
            errno.EROFS,
            "the disk is read-only on the receiver while storing 'a.npy' (Read-only file "
            "system); it was mounted read-only (after errors?), or lies outside the service's "
            "ReadWritePaths=; journalctl -k shows the kernel's messages",
        ),
        (
            errno.EXDEV,
            "the partial and incoming folders are on different filesystems on the receiver "
            "while storing 'a.npy' (Invalid cross-device link); leave partial_dir unset, so "
            "unfinished files are kept inside the incoming folder",
        ),
        (
            errno.EIO,
            "I/O error on the receiver while storing 'a.npy' (Input/output error); check its "
            "disk (journalctl -k shows kernel I/O errors)",
        ),
        (
            errno.ENOSPC,
            "no space left on the receiver while storing 'a.npy'; free some space there",
        ),
    ],
)
def test_each_run_time_error_is_told_as_what_it_is(number: int, told: str) -> None:
    assert str(io_error(OSError(number, os.strerror(number)), "storing 'a.npy'")) == told


def test_a_folder_outside_the_sandbox_is_told_to_be_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert describe_error(error, Path("/srv/scans")) == (
        "/srv/scans is on a filesystem mounted read-only; remount it read-write"
    )
    monkeypatch.setenv("INVOCATION_ID", "0123")  # what systemd sets for a service's run
    assert describe_error(error, Path("/srv/scans")) == (
        "/srv/scans is read-only to the service, whose sandbox allows writing only in its state "
        "folder and in ReadWritePaths=; allow it: sudo systemctl edit scanxfer-receiver, add "
        "[Service] ReadWritePaths=/srv/scans"
    )
