"""`scanxfer keys add|list|revoke` and `scanxfer pair`, run through the real command line."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scanxfer import config
from scanxfer.cli import main
from scanxfer.config import Address, default_sender_config_path, load_sender_config
from scanxfer.hostaddr import read_host_addresses
from scanxfer.keys import Keyring, keys_path
from scanxfer.keys.listening import recorded
from scanxfer.keys.pairing import Pairing, parse_pairing
from scanxfer.keys.seen import SeenLog, seen_path
from scanxfer.protocol.auth import decode_secret, new_secret, verifier
from scanxfer.tls import format_fingerprint, load_identity

NOBODY = 65534


@pytest.fixture(autouse=True)
def _no_system_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "RECEIVER_CONFIG_PATH", tmp_path / "etc-receiver.yaml")


class Receiver:
    """A receiver's settings file and state directory under `root`."""

    def __init__(self, root: Path, settings: str = "") -> None:
        self.state = root / "state"
        self.settings = root / "receiver.yaml"
        self.settings.write_text(settings)

    def args(self, *argv: str) -> list[str]:
        return [*argv, "-c", str(self.settings), "--state-dir", str(self.state)]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _add(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, name: str, *options: str
) -> tuple[Pairing, str]:
    status, out, err = _run(capsys, *receiver.args("keys", "add", name, *options))
    assert status == 0, err
    assert out.count("\n") == 1 and out.endswith("\n")
    return parse_pairing(out), err


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    return Receiver(tmp_path, 'listen: "0.0.0.0:5000"\n')


def test_keys_add_prints_one_line_holding_key_address_and_fingerprint(
    capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    pairing, err = _add(capsys, receiver, "lab-pc", "--address", "192.0.2.7")
    assert (pairing.name, pairing.host, pairing.port) == ("lab-pc", "192.0.2.7", 5000)
    assert pairing.tls and pairing.fingerprint == load_identity(receiver.state).fingerprint
    entry = Keyring(keys_path(receiver.state)).lookup("lab-pc")
    assert entry is not None and entry.verifier == verifier(decode_secret(pairing.secret))
    line = f"scanxfer://lab-pc:{pairing.secret}@192.0.2.7:5000/?fingerprint={pairing.fingerprint}"
    assert f"scanxfer pair '{line}'" in err
    port = "the listen port in the receiver's settings"
    assert f"192.0.2.7:5000 (host: --address; port: {port})" in err
    shown = format_fingerprint(pairing.fingerprint)
    assert f"certificate fingerprint (SHA-256) in the line: {shown}\n" in err


@pytest.mark.parametrize(
    ("option", "host", "port"),
    [
        ("192.0.2.7:6000", "192.0.2.7", 6000),
        ("pi.lab.example", "pi.lab.example", 5000),
        ("pi.lab.example:7000", "pi.lab.example", 7000),
        ("2001:db8::1", "2001:db8::1", 5000),
        ("[2001:db8::1]", "2001:db8::1", 5000),
        ("[2001:db8::1]:7000", "2001:db8::1", 7000),
    ],
)
def test_address_forms(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, option: str, host: str, port: int
) -> None:
    pairing, _ = _add(capsys, receiver, "lab-pc", "--address", option)
    assert (pairing.host, pairing.port) == (host, port)


@pytest.mark.parametrize("option", ["999.1.1.1", "[pi]:5000", "a b", "host:99999"])
def test_a_bad_address_is_a_usage_error_and_issues_nothing(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, option: str
) -> None:
    status, out, err = _run(capsys, *receiver.args("keys", "add", "lab-pc", "--address", option))
    assert (status, out) == (2, "")
    assert "--address" in err
    assert not keys_path(receiver.state).exists()


def test_a_specific_listen_address_is_the_default(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    receiver = Receiver(tmp_path, 'listen: "127.0.0.1:5123"\ntls: false\n')
    pairing, err = _add(capsys, receiver, "lab-pc")
    assert (pairing.host, pairing.port) == ("127.0.0.1", 5123)
    assert "listen address" in err


@pytest.mark.parametrize(("option", "port"), [(None, 5000), (":6001", 6001), ("6002", 6002)])
def test_on_a_wildcard_listen_address_this_hosts_primary_address_is_used(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, option: str | None, port: int
) -> None:
    found = read_host_addresses().of_version(4)
    pairing, err = _add(capsys, receiver, "lab-pc", *(["--address", option] if option else []))
    assert pairing.host == (found.primary or socket.gethostname())
    assert pairing.port == port
    if found.primary is not None:
        assert "host: this host's primary address (interfaces and routes)" in err
    if found.others:
        assert f"this host's other addresses: {', '.join(found.others)}\n" in err


def test_the_port_of_a_running_receiver_wins_over_the_settings(
    capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    receiver.state.mkdir()
    # This process stands in for the receiver: the record is believed while its pid runs.
    with recorded(receiver.state, Address("127.0.0.1", 6123)):
        pairing, err = _add(capsys, receiver, "lab-pc")
    assert (pairing.host, pairing.port) == ("127.0.0.1", 6123)
    whose = f"of the running receiver (pid {os.getpid()})"
    source = f"host: the listen address {whose}; port: the listen port {whose}"
    assert f"127.0.0.1:6123 ({source})" in err
    pairing, _ = _add(capsys, receiver, "lab-pc", "--replace", "--address", "pi")
    assert pairing.port == 5000  # the receiver stopped: back to the settings


def test_listening_on_port_0_needs_the_port_given(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    receiver = Receiver(tmp_path, 'listen: "0.0.0.0:0"\n')
    status, out, err = _run(capsys, *receiver.args("keys", "add", "lab-pc", "--address", "pi"))
    assert (status, out) == (2, "")
    assert "--address HOST:PORT" in err
    pairing, _ = _add(capsys, receiver, "lab-pc", "--address", "pi:5555")
    assert pairing.port == 5555


def test_without_tls_the_line_says_so_and_no_certificate_is_made(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    receiver = Receiver(tmp_path, "tls: false\n")
    pairing, err = _add(capsys, receiver, "lab-pc", "--address", "pi")
    assert (pairing.tls, pairing.fingerprint) == (False, None)
    assert not (receiver.state / "tls").exists()
    assert "unencrypted" in err


def test_a_second_key_for_a_name_needs_replace(
    capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    first, _ = _add(capsys, receiver, "lab-pc", "--address", "pi")
    status, out, err = _run(capsys, *receiver.args("keys", "add", "lab-pc", "--address", "pi"))
    assert (status, out) == (1, "")
    # The way out acts on the same receiver as the command that was refused.
    expected = receiver.args("scanxfer keys add lab-pc --replace")[0]
    options = f" -c {receiver.settings} --state-dir {receiver.state}"
    assert f"run: {expected}{options}" in err
    second, _ = _add(capsys, receiver, "lab-pc", "--address", "pi", "--replace")
    assert second.secret != first.secret
    entry = Keyring(keys_path(receiver.state)).lookup("lab-pc")
    assert entry is not None and entry.verifier == verifier(decode_secret(second.secret))


@pytest.mark.parametrize("name", [".hidden", "a/b", "lab pc"])
def test_a_bad_name_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, name: str
) -> None:
    status, out, err = _run(capsys, *receiver.args("keys", "add", name))
    assert (status, out) == (2, "")
    assert "cannot name a sender" in err
    assert not receiver.state.exists()


def test_list_and_revoke(capsys: pytest.CaptureFixture[str], receiver: Receiver) -> None:
    status, out, err = _run(capsys, *receiver.args("keys", "list"))
    assert (status, out) == (0, "")
    assert "no sender keys yet" in err
    _add(capsys, receiver, "lab-pc", "--address", "pi")
    _add(capsys, receiver, "beamline-7", "--address", "pi")
    assert _run(capsys, *receiver.args("keys", "revoke", "lab-pc"))[0] == 0
    # Revoking again changes nothing and is no failure: the key is revoked, as asked.
    again, _, err = _run(capsys, *receiver.args("keys", "revoke", "lab-pc"))
    assert again == 0 and "the key of lab-pc was already revoked on " in err
    assert "; nothing to do" in err
    status, out, _ = _run(capsys, *receiver.args("keys", "list"))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "STATUS", "LAST", "SEEN"]
    assert lines[1].split() == ["beamline-7", lines[1].split()[1], "active", "never"]
    assert lines[2].split()[0::2] == ["lab-pc", "revoked", "never"]
    fingerprint = format_fingerprint(load_identity(receiver.state).fingerprint)
    assert lines[-1] == f"certificate fingerprint (SHA-256): {fingerprint}"
    entry = Keyring(keys_path(receiver.state)).lookup("lab-pc")
    assert entry is not None and not entry.active


@pytest.fixture
def central_european_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time one hour ahead of UTC, as in Berlin in winter."""
    monkeypatch.setenv("TZ", "CET-1")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("central_european_time")
def test_list_shows_when_and_from_where_each_sender_was_last_seen(
    capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    _add(capsys, receiver, "lab-pc", "--address", "pi")
    _add(capsys, receiver, "beamline-7", "--address", "pi")
    seen = SeenLog(seen_path(receiver.state))
    seen.saw("lab-pc", "192.168.1.50", datetime(2026, 11, 30, 9, 30, 5, tzinfo=UTC))
    seen.saw("gone-pc", "10.0.0.9")  # a name no longer in keys.json is not listed
    seen.flush()
    status, out, err = _run(capsys, *receiver.args("keys", "list"))
    assert status == 0, err
    lines = out.splitlines()
    start = lines[0].index("LAST SEEN")
    assert lines[1][start:] == "never"  # beamline-7
    assert lines[2][start:] == "2026-11-30 10:30:05 +0100 from 192.168.1.50"  # lab-pc
    assert "gone-pc" not in out


def test_list_warns_about_a_damaged_seen_file_and_lists_the_keys(
    capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    _add(capsys, receiver, "lab-pc", "--address", "pi")
    seen_path(receiver.state).write_text("{")
    status, out, err = _run(capsys, *receiver.args("keys", "list"))
    assert status == 0, err
    assert out.splitlines()[1].split()[0::2] == ["lab-pc", "active"]
    assert f"{seen_path(receiver.state)} is damaged" in err
    assert "delete it" in err and "LAST SEEN is left blank" in err


def test_revoking_an_unknown_sender_fails_clearly(
    capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    status, out, err = _run(capsys, *receiver.args("keys", "revoke", "nobody"))
    assert (status, out) == (1, "")
    assert "no sender named 'nobody'" in err


def test_keys_without_an_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(capsys, "keys")
    assert status == 2
    assert "add" in err and "revoke" in err


# --- pair ------------------------------------------------------------------------------------


def test_pair_writes_what_keys_add_printed(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, tmp_path: Path
) -> None:
    status, line, _ = _run(capsys, *receiver.args("keys", "add", "lab-pc", "--address", "pi"))
    assert status == 0
    settings = tmp_path / "sender settings.yaml"
    status, out, err = _run(capsys, "pair", line.strip(), "-c", str(settings), "--no-check")
    assert (status, out) == (0, "")
    sender = load_sender_config(settings)
    assert (str(sender.receiver), sender.name, sender.tls) == ("pi:5000", "lab-pc", True)
    assert sender.fingerprint == load_identity(receiver.state).fingerprint
    entry = Keyring(keys_path(receiver.state)).lookup(sender.name)
    assert entry is not None and sender.key is not None
    assert entry.verifier == verifier(decode_secret(sender.key))
    assert f"wrote {settings}" in err
    assert "not checked (--no-check): the receiver was not contacted.\n" in err
    assert f"scanxfer send --once -c '{settings}'" in err
    assert "scanxfer install-user-unit" in err


def test_pair_writes_the_users_settings_by_default(
    capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    pairing, _ = _add(capsys, receiver, "lab-pc", "--address", "pi")
    status, _, err = _run(capsys, "pair", f"'{_line(pairing)}'", "--no-check")
    assert status == 0
    assert load_sender_config(default_sender_config_path()).key == pairing.secret
    assert "test it with: scanxfer send --once\n" in err


def _line(pairing: Pairing) -> str:
    from scanxfer.keys.pairing import format_pairing

    return format_pairing(pairing)


def test_pair_refuses_a_bad_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = tmp_path / "sender.yaml"
    status, out, err = _run(capsys, "pair", "scanxfer://lab-pc@pi:5000", "-c", str(settings))
    assert (status, out) == (2, "")
    assert "not a pairing line" in err and "copy the whole line" in err
    assert not settings.exists()


def _pair(capsys: pytest.CaptureFixture[str], pairing: Pairing, *options: str) -> tuple[int, str]:
    status, out, err = _run(capsys, "pair", _line(pairing), "--no-check", *options)
    assert out == ""
    return status, err


PAIRED = Pairing("192.0.2.7", 5000, "lab-pc", new_secret(), "ab" * 32, True)


@pytest.mark.parametrize(
    "other",
    [
        dataclasses.replace(PAIRED, fingerprint="cd" * 32),
        dataclasses.replace(PAIRED, fingerprint=None, tls=False),
    ],
    ids=["another certificate", "without tls"],
)
def test_pairing_with_another_receiver_needs_replace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, other: Pairing
) -> None:
    settings = str(tmp_path / "sender.yaml")
    assert _pair(capsys, PAIRED, "-c", settings)[0] == 0
    before = Path(settings).read_bytes()
    status, err = _pair(capsys, other, "-c", settings)
    assert status == 2
    assert (
        f"{settings} is paired with receiver 192.0.2.7:5000 (certificate "
        f"{format_fingerprint(PAIRED.fingerprint or '')}) as lab-pc; the line is for "
        f"{_described(other)}. To pair with that one instead, run the same command with "
        f"--replace" in err
    )
    assert Path(settings).read_bytes() == before
    assert _pair(capsys, other, "-c", settings, "--replace")[0] == 0
    assert load_sender_config(Path(settings)).key == other.secret


def _described(pairing: Pairing) -> str:
    if pairing.fingerprint is None:
        return f"receiver {pairing.address} (without TLS)"
    return f"receiver {pairing.address} (certificate {format_fingerprint(pairing.fingerprint)})"


@pytest.mark.parametrize(
    "same",
    [
        dataclasses.replace(PAIRED, secret=new_secret()),  # keys add --replace
        dataclasses.replace(PAIRED, host="pi.lab.example", port=6000),  # the Pi moved
    ],
    ids=["a new key", "a new address"],
)
def test_pairing_again_with_the_same_receiver_needs_no_replace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, same: Pairing
) -> None:
    settings = tmp_path / "sender.yaml"
    assert _pair(capsys, PAIRED, "-c", str(settings))[0] == 0
    assert _pair(capsys, same, "-c", str(settings))[0] == 0
    config = load_sender_config(settings)
    assert (config.key, config.receiver) == (same.secret, same.address)


def test_without_tls_another_address_is_another_receiver(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = str(tmp_path / "sender.yaml")
    plain = dataclasses.replace(PAIRED, fingerprint=None, tls=False)
    assert _pair(capsys, plain, "-c", settings)[0] == 0
    assert _pair(capsys, dataclasses.replace(plain, secret=new_secret()), "-c", settings)[0] == 0
    status, err = _pair(capsys, dataclasses.replace(plain, port=5001), "-c", settings)
    assert status == 2 and "--replace" in err


# --- who may run it ---------------------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory everyone can enter: tmp_path lies under pytest's private 0700 directory,
    which would stop another user before the state directory is even reached."""
    path = Path(tempfile.mkdtemp(prefix="scanxfer-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _run_as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run the command line in a forked child that has dropped root; (status, stderr)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sys.stderr = os.fdopen(write_end, "w")
            status = main(argv)
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        err = pipe.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set up a root-owned state dir")
@pytest.mark.parametrize(
    ("settings", "argv"),
    [
        ("", ["keys", "add", "other", "--address", "pi"]),
        ("tls: false\n", ["keys", "add", "other", "--address", "pi"]),
        ("", ["keys", "list"]),
        ("", ["keys", "revoke", "lab-pc"]),
    ],
)
def test_a_user_on_a_root_owned_state_dir_is_told_to_use_sudo(
    capsys: pytest.CaptureFixture[str], open_dir: Path, settings: str, argv: list[str]
) -> None:
    receiver = Receiver(open_dir, settings)
    _add(capsys, receiver, "lab-pc", "--address", "pi")
    before = keys_path(receiver.state).read_bytes()
    status, err = _run_as_nobody(receiver.args(*argv))
    assert status == 1, err
    assert "permission denied; run it with sudo" in err
    assert keys_path(receiver.state).read_bytes() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_sudo_keys_add_leaves_the_files_readable_by_the_receivers_user(
    capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    receiver.state.mkdir()
    os.chown(receiver.state, NOBODY, NOBODY)
    _add(capsys, receiver, "lab-pc", "--address", "pi")
    for path in (keys_path(receiver.state), receiver.state / "tls" / "key.pem"):
        assert path.stat().st_uid == NOBODY, path
