"""`scanxfer pair` against real receivers: one handshake before anything is written, a reason
and an exit status for each way it fails, no part of the key in any message, --replace and
--no-check; and `keys add` putting the port the running receiver really listens on in the line.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from pathlib import Path

import pytest

from scanxfer.keys.listening import listening_path
from scanxfer.keys.pairing import Pairing, format_pairing, parse_pairing
from scanxfer.tls import format_fingerprint, load_identity

from .attack import StartReceiver, logged, scanxfer
from .harness import (
    ReceiverProcess,
    assert_identical,
    credentials,
    send_once,
    unused_port,
    write_scan,
)

REPLACE = "sudo scanxfer keys add lab-pc --replace"


def issue(receiver: ReceiverProcess, *options: str) -> subprocess.CompletedProcess[str]:
    """`scanxfer keys add lab-pc` on the receiver's settings and state, as an admin runs it."""
    assert receiver.config is not None
    issued = scanxfer(
        "keys", "add", "lab-pc", "-c", str(receiver.config), "--state-dir", str(receiver.state),
        *options,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    return issued


def line_of(receiver: ReceiverProcess, *options: str) -> Pairing:
    return parse_pairing(issue(receiver, *options).stdout)


def settings(tmp_path: Path) -> Path:
    """A sender's settings before pairing: where its scans and its journal are."""
    path = tmp_path / "sender.yaml"
    path.write_text(f"watch_dir: {tmp_path / 'scans'}\nstate_dir: {tmp_path / 'sender-state'}\n")
    return path


def pair(path: Path, line: str, *options: str) -> subprocess.CompletedProcess[str]:
    return scanxfer("pair", line, "-c", str(path), *options)


def assert_no_part_of(secret: str, result: subprocess.CompletedProcess[str]) -> None:
    for start in range(len(secret) - 7):
        piece = secret[start : start + 8]
        assert piece not in result.stdout and piece not in result.stderr, piece


def test_keys_add_puts_the_port_the_running_receiver_listens_on_in_the_line(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver()  # on a free port, while its settings say 5000
    assert receiver.child is not None
    issued = issue(receiver)
    paired = parse_pairing(issued.stdout)
    assert (paired.host, paired.port) == ("127.0.0.1", receiver.port) != ("127.0.0.1", 5000)
    whose = f"of the running receiver (pid {receiver.child.process.pid})"
    assert (
        f"address in the line: 127.0.0.1:{receiver.port} (host: the listen address {whose}; "
        f"port: the listen port {whose})\n" in issued.stderr
    )
    sender = settings(tmp_path)
    paired_ok = pair(sender, format_pairing(paired))
    assert paired_ok.returncode == 0, paired_ok.stderr
    assert "checked: the receiver let this sender in with this key.\n" in paired_ok.stderr
    write_scan(tmp_path / "scans" / "a.npy", (64,), seed=1)
    delivered = send_once(sender)
    assert delivered.returncode == 0, delivered.log
    assert_identical(tmp_path / "scans", receiver.incoming)

    assert receiver.stop() == 0
    assert not listening_path(receiver.state).exists()  # removed at a clean stop
    again = issue(receiver, "--replace")
    assert "port: the listen port in the receiver's settings" in again.stderr
    assert parse_pairing(again.stdout).port == 5000


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="this host has no IPv6")
def test_a_receiver_on_every_address_is_reached_at_the_address_its_line_names(
    tmp_path: Path,
) -> None:
    """listen: "[::]:PORT" takes IPv4 too: `keys add` names this host's primary address, which
    is IPv4 on most networks, and the sender must get in there."""
    config = tmp_path / "receiver.yaml"
    config.write_text("name: pi\n")
    receiver = ReceiverProcess(tmp_path / "pi", config=config, host="::").start()
    try:
        issued = issue(receiver)
        sender = settings(tmp_path)
        paired = pair(sender, issued.stdout.strip())
        assert paired.returncode == 0, issued.stderr + paired.stderr
        write_scan(tmp_path / "scans" / "a.npy", (64,), seed=2)
        delivered = send_once(sender)
        assert delivered.returncode == 0, delivered.log
    finally:
        receiver.stop()
    assert_identical(tmp_path / "scans", receiver.incoming)


def test_a_receiver_that_does_not_answer_is_unreachable(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver()
    paired = line_of(receiver)
    receiver.stop()
    sender = settings(tmp_path)
    before = sender.read_bytes()
    result = pair(sender, format_pairing(paired))
    assert result.returncode == 3, result.stderr
    assert result.stderr == (
        f"scanxfer: error: cannot connect to receiver 127.0.0.1:{paired.port}: [Errno 111] "
        f"Connection refused; nothing was written to {sender}. Check that the receiver runs "
        f"(on it: systemctl status scanxfer-receiver) and that this PC reaches "
        f"127.0.0.1:{paired.port} (a firewall?), then pair again; to set this sender up now "
        f"and check later, run the same command with --no-check\n"
    )
    assert sender.read_bytes() == before
    assert_no_part_of(paired.secret, result)


def test_a_receiver_with_another_certificate_is_named_with_both_fingerprints(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    """The line's receiver made its identity anew (or the line is another receiver's)."""
    real = start_receiver()
    remade = start_receiver("remade", own_identity=True)
    paired = dataclasses.replace(line_of(real), port=remade.port)
    sender = settings(tmp_path)
    before = sender.read_bytes()
    result = pair(sender, format_pairing(paired))
    assert result.returncode == 2, result.stderr
    presented = format_fingerprint(load_identity(remade.state).fingerprint)
    pinned = format_fingerprint(credentials().fingerprint)
    assert result.stderr == (
        f"scanxfer: error: receiver 127.0.0.1:{remade.port} presented the certificate "
        f"{presented}, not {pinned} of the pairing line: the line comes from another "
        f"receiver, or this receiver's identity was made anew (its tls folder removed, or the "
        f"receiver reinstalled); nothing was written to {sender}. On the receiver at "
        f"127.0.0.1:{remade.port}, run: {REPLACE}, and pair with the line it prints\n"
    )
    assert sender.read_bytes() == before
    assert "connected" not in remade.log  # no name, no proof went to it


def _one_letter_changed(secret: str) -> str:
    middle = len(secret) // 2
    return secret[:middle] + ("A" if secret[middle] != "A" else "B") + secret[middle + 1 :]


@pytest.mark.parametrize("how", ["one letter changed", "revoked"])
def test_a_key_the_receiver_does_not_accept_is_refused(
    tmp_path: Path, start_receiver: StartReceiver, how: str
) -> None:
    receiver = start_receiver()
    issued = line_of(receiver)
    if how == "revoked":
        revoked = scanxfer("keys", "revoke", "lab-pc", "--state-dir", str(receiver.state))
        assert revoked.returncode == 0, revoked.stderr
        paired = issued
    else:
        paired = dataclasses.replace(issued, secret=_one_letter_changed(issued.secret))
    sender = settings(tmp_path)
    before = sender.read_bytes()
    result = pair(sender, format_pairing(paired))
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"scanxfer: error: receiver 127.0.0.1:{receiver.port} refused the key of lab-pc "
        f"(authentication failed): it may have been revoked, or replaced by a newer one; "
        f"nothing was written to {sender}. On the receiver, run: {REPLACE}, and pair with "
        f"the line it prints\n"
    )
    assert sender.read_bytes() == before
    assert_no_part_of(issued.secret, result)
    assert_no_part_of(paired.secret, result)
    logged(receiver, "handshake failed")


SECRET_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
KEY_IS_WRONG = "its key (between ':' and '@') is wrong: "
# How a line gets mangled on its way, and what `pair` says about it.
MANGLED = {
    "cut in the key": "it has no NAME:KEY@ before the receiver's address",
    "cut after the @": "it has no HOST:PORT after the '@' (a port from 1 to 65535)",
    "no name": "it has no NAME:KEY@ before the receiver's address",
    "a letter too many": f"{KEY_IS_WRONG}a key is 43 characters of base64url, this one has 44",
    "not base64url": f"{KEY_IS_WRONG}a key is base64url text (letters, digits, '-' and '_') only",
    "last letter changed": f"{KEY_IS_WRONG}its last character cannot end a key: a character "
    "was changed",
    "cut in the fingerprint": "it must end in ?fingerprint=<64 hex digits> or ?tls=off: its "
    "fingerprint is not 64 hex digits",
}


def mangled(how: str, line: str, secret: str) -> str:
    at = line.index("@")
    # The last character holds two bits that must be zero: 48 of its 64 values are no key's.
    last = next(c for c in SECRET_CHARACTERS if SECRET_CHARACTERS.index(c) % 4)
    return {
        "cut in the key": line[: at - 5],
        "cut after the @": line[: at + 4],
        "no name": line.replace("lab-pc:", ""),
        "a letter too many": line.replace("@", "x@"),
        "not base64url": line.replace(secret, secret[:20] + "+" + secret[21:]),
        "last letter changed": line.replace(secret, secret[:-1] + last),
        "cut in the fingerprint": line[:-10],
    }[how]


@pytest.mark.parametrize("how", MANGLED)
def test_a_mangled_line_is_refused_without_a_word_of_its_key(tmp_path: Path, how: str) -> None:
    secret = credentials().secret
    line = format_pairing(
        Pairing("127.0.0.1", unused_port(), "lab-pc", secret, credentials().fingerprint, True)
    )
    sender = tmp_path / "sender.yaml"
    result = pair(sender, mangled(how, line, secret))
    assert result.returncode == 2, result.stderr
    assert (
        f"scanxfer pair: error: not a pairing line: {MANGLED[how]}; copy the whole line "
        f"printed by `scanxfer keys add`\n" in result.stderr
    )
    assert_no_part_of(secret, result)
    assert not sender.exists()


def test_pairing_with_another_receiver_needs_replace(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    first = start_receiver()
    second = start_receiver("second", own_identity=True)
    sender = settings(tmp_path)
    assert pair(sender, format_pairing(line_of(first))).returncode == 0
    # A new key from the same receiver (keys add --replace) needs no --replace here.
    renewed = line_of(first, "--replace")
    assert pair(sender, format_pairing(renewed)).returncode == 0
    before = sender.read_bytes()

    other = line_of(second)
    refused = pair(sender, format_pairing(other))
    assert refused.returncode == 2, refused.stderr
    old = format_fingerprint(credentials().fingerprint)
    new = format_fingerprint(load_identity(second.state).fingerprint)
    assert (
        f"scanxfer pair: error: {sender} is paired with receiver 127.0.0.1:{first.port} "
        f"(certificate {old}) as lab-pc; the line is for receiver 127.0.0.1:{second.port} "
        f"(certificate {new}). To pair with that one instead, run the same command with "
        f"--replace (the sender then delivers to it every scan in the watch folder that it "
        f"has not had)\n" in refused.stderr
    )
    assert sender.read_bytes() == before
    assert_no_part_of(other.secret, refused)

    replaced = pair(sender, format_pairing(other), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    write_scan(tmp_path / "scans" / "a.npy", (64,), seed=2)
    delivered = send_once(sender)
    assert delivered.returncode == 0, delivered.log
    assert_identical(tmp_path / "scans", second.incoming)
    assert first.stored_files() == []


def test_no_check_writes_the_line_without_contacting_the_receiver(tmp_path: Path) -> None:
    port = unused_port()
    paired = Pairing("127.0.0.1", port, "lab-pc", credentials().secret, None, False)
    sender = settings(tmp_path)
    result = pair(sender, format_pairing(paired), "--no-check")
    assert result.returncode == 0, result.stderr
    assert "not checked (--no-check): the receiver was not contacted.\n" in result.stderr
    assert f'receiver: "127.0.0.1:{port}"\n' in sender.read_text()
    assert_no_part_of(paired.secret, result)


def test_a_line_without_tls_is_checked_over_plain_tcp(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver(tls="false")
    paired = line_of(receiver)
    assert (paired.tls, paired.port) == (False, receiver.port)
    sender = settings(tmp_path)
    result = pair(sender, format_pairing(paired))
    assert result.returncode == 0, result.stderr
    assert "checked: the receiver let this sender in with this key.\n" in result.stderr
    logged(receiver, "sender 'lab-pc' connected")
