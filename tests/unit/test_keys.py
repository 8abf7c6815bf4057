"""The receiver's key file (scanxfer.keys): what it stores, how it refuses damage, and how the
running receiver follows it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import scanxfer
from scanxfer import atomic
from scanxfer.keys import (
    KEYS_FILE_NAME,
    KeyExists,
    KeyFile,
    Keyring,
    KeysError,
    check_sender_name,
    keys_path,
)
from scanxfer.protocol.auth import decode_secret, verifier

REPO = Path(scanxfer.__file__).parents[1]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return keys_path(tmp_path / "state")


def _replace(path: Path, data: bytes) -> None:
    """Change the file the way an editor that saves by rename would."""
    atomic.write(path, data, mode=0o600)


def test_keys_path_is_keys_json_in_the_state_dir(tmp_path: Path) -> None:
    assert keys_path(tmp_path) == tmp_path / KEYS_FILE_NAME == tmp_path / "keys.json"


@pytest.mark.parametrize("name", ["a", "lab-pc", "A.b_c-1", "9", "x" * 64])
def test_good_sender_names(name: str) -> None:
    assert check_sender_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-x", "a/b", "..", "a\0b", "lab pc", "x" * 65, "é", "a:b", "a@b"]
)
def test_names_that_cannot_be_a_directory_or_a_pairing_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot name a sender"):
        check_sender_name(name)


def test_add_stores_the_verifier_and_never_the_secret(path: Path) -> None:
    secret = KeyFile(path).add("lab-pc")
    text = path.read_text()
    assert secret not in text
    assert decode_secret(secret).hex() not in text
    [entry] = KeyFile(path).entries()
    assert (entry.name, entry.active, entry.revoked) == ("lab-pc", True, None)
    assert entry.verifier == verifier(decode_secret(secret))
    assert entry.created.endswith("Z")
    record = json.loads(text)["senders"]["lab-pc"]
    assert record["stored_key"] == entry.verifier.stored_key.hex()
    assert json.loads(text)["version"] == 1
    assert path.stat().st_mode & 0o777 == 0o600


def test_each_key_is_new(path: Path) -> None:
    keys = KeyFile(path)
    assert keys.add("a") != keys.add("b")


def test_an_active_name_is_replaced_only_when_asked(path: Path) -> None:
    keys = KeyFile(path)
    first = keys.add("lab-pc")
    with pytest.raises(KeyExists, match="already has a key"):  # the CLI says how to replace
        keys.add("lab-pc")
    assert keys.entries()[0].verifier == verifier(decode_secret(first))
    second = keys.add("lab-pc", replace=True)
    assert (
        keys.entries()[0].verifier
        == verifier(decode_secret(second))
        != verifier(decode_secret(first))
    )


def test_revoke_keeps_the_record_and_a_revoked_name_can_be_issued_again(path: Path) -> None:
    keys = KeyFile(path)
    keys.add("lab-pc")
    keys.revoke("lab-pc")
    [entry] = keys.entries()
    assert not entry.active and entry.revoked is not None
    assert keys.revoke("lab-pc") == entry.revoked  # again: nothing changes, and says since when
    assert keys.entries() == [entry]
    secret = keys.add("lab-pc")
    [entry] = keys.entries()
    assert entry.active and entry.verifier == verifier(decode_secret(secret))


def test_revoking_a_stranger_names_the_known_senders(path: Path) -> None:
    keys = KeyFile(path)
    keys.add("lab-pc")
    with pytest.raises(KeysError) as caught:
        keys.revoke("nobody")
    assert str(caught.value).startswith("no sender named 'nobody'")
    assert "lab-pc" in str(caught.value) and "keys list" in str(caught.value)
    assert isinstance(caught.value, KeyError)


def test_a_new_receiver_has_no_senders(path: Path) -> None:
    assert KeyFile(path).entries() == []
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"version": 2, "senders": {}}',
        b'{"version": 1}',
        b'{"version": 1, "senders": []}',
        b'{"version": 1, "senders": {"../x": {}}}',
        b'{"version": 1, "senders": {"a": {"stored_key": "00", "server_key": "00",'
        b' "created": "x", "revoked": null}}}',
        b'{"version": 1, "senders": {"a": {"stored_key": "' + b"0" * 64 + b'"}}}',
    ],
)
def test_a_damaged_file_is_refused_and_left_as_it_is(path: Path, content: bytes) -> None:
    path.parent.mkdir()
    path.write_bytes(content)
    for change in (lambda: KeyFile(path).add("new"), lambda: KeyFile(path).revoke("a")):
        with pytest.raises(KeysError, match=f"{path} is damaged.*backup"):
            change()
    with pytest.raises(KeysError, match="damaged"):
        KeyFile(path).entries()
    assert path.read_bytes() == content


def test_concurrent_keys_add_commands_all_end_up_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "receiver.yaml"
    config.write_text("tls: false\n")
    names = [f"pc-{n}" for n in range(12)]
    state = tmp_path / "state"
    command = [sys.executable, "-m", "scanxfer", "-q", "keys", "add", "-c", str(config)]
    command += ["--state-dir", str(state), "--address", "192.0.2.1"]
    runs = [
        subprocess.Popen([*command, name], cwd=REPO, stdout=subprocess.DEVNULL) for name in names
    ]
    assert [run.wait(timeout=120) for run in runs] == [0] * len(names)
    recorded = [entry.name for entry in KeyFile(keys_path(state)).entries()]
    assert recorded == sorted(names)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_root_hands_the_file_to_the_owner_of_the_state_dir(tmp_path: Path) -> None:
    os.chown(tmp_path, 65534, 65534)
    KeyFile(keys_path(tmp_path)).add("lab-pc")
    for name in ("keys.json", "keys.json.lock"):
        info = (tmp_path / name).stat()
        assert (info.st_uid, info.st_gid) == (65534, 65534), name


# --- the running receiver's view ---------------------------------------------------------------


def test_the_keyring_sees_keys_added_and_revoked_without_a_new_object(path: Path) -> None:
    ring = Keyring(path)
    assert ring.lookup("lab-pc") is None and ring.active_names() == set()
    secret = KeyFile(path).add("lab-pc")
    entry = ring.lookup("lab-pc")
    assert entry is not None and entry.active
    assert entry.verifier == verifier(decode_secret(secret))
    KeyFile(path).add("other")
    assert ring.active_names() == {"lab-pc", "other"}
    KeyFile(path).revoke("lab-pc")
    entry = ring.lookup("lab-pc")
    assert entry is not None and not entry.active
    assert ring.active_names() == {"other"}


def test_a_key_is_retired_when_revoked_replaced_or_removed(path: Path) -> None:
    """What the receiver asks of each open connection: does the key it proved still count?"""
    ring = Keyring(path)
    old = verifier(decode_secret(KeyFile(path).add("lab-pc")))
    ring.refresh()
    assert ring.retired("lab-pc", old) is None
    new = verifier(decode_secret(KeyFile(path).add("lab-pc", replace=True)))
    assert ring.retired("lab-pc", old) is None  # as of the last refresh: none since
    ring.refresh()
    assert ring.retired("lab-pc", old) == "its key was replaced (keys add --replace)"
    assert ring.retired("lab-pc", new) is None
    KeyFile(path).revoke("lab-pc")
    ring.refresh()
    assert ring.retired("lab-pc", new) == "its key was revoked"
    path.unlink()
    ring.refresh()
    assert ring.retired("lab-pc", new) == "its key was removed from keys.json"


def test_refresh_reports_whether_the_file_changed(path: Path) -> None:
    ring = Keyring(path)
    assert ring.refresh() is True  # the first look
    assert ring.refresh() is False
    KeyFile(path).add("lab-pc")
    assert ring.refresh() is True
    assert ring.refresh() is False
    path.unlink()
    assert ring.refresh() is True
    assert ring.lookup("lab-pc") is None  # a deleted file means no senders


def test_a_file_that_turns_bad_keeps_the_keys_read_before_and_is_logged_once_per_change(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    KeyFile(path).add("lab-pc")
    ring = Keyring(path)
    assert ring.active_names() == {"lab-pc"}
    caplog.set_level(logging.ERROR, logger="scanxfer.keys")
    _replace(path, b"{half a file")
    for _ in range(3):
        assert ring.active_names() == {"lab-pc"}
    assert len(caplog.records) == 1
    assert str(path) in caplog.records[0].getMessage()
    _replace(path, b"{another broken version")
    assert ring.lookup("lab-pc") is not None
    assert len(caplog.records) == 2


def test_a_bad_file_at_start_means_no_senders_and_an_error(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path.parent.mkdir()
    path.write_text("nonsense")
    caplog.set_level(logging.ERROR, logger="scanxfer.keys")
    assert Keyring(path).lookup("lab-pc") is None
    assert [record.levelno for record in caplog.records] == [logging.ERROR]
