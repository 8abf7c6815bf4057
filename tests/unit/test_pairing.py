"""The pairing line (scanxfer.keys.pairing): its format, the lines it refuses, and the sender
settings file it writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scanxfer.config import ConfigError, load_sender_config
from scanxfer.keys.pairing import Pairing, format_pairing, parse_pairing, write_sender_config
from scanxfer.protocol.auth import new_secret

SECRET = new_secret()
FINGERPRINT = "0123456789abcdef" * 4
TLS = Pairing("192.168.1.50", 5000, "lab-pc", SECRET, FINGERPRINT, True)
PLAIN = Pairing("pi.lab.example", 6000, "pc.2_b", SECRET, None, False)
IPV6 = Pairing("fe80::1", 5000, "lab-pc", SECRET, FINGERPRINT, True)


def test_the_line_format() -> None:
    assert format_pairing(TLS) == (
        f"scanxfer://lab-pc:{SECRET}@192.168.1.50:5000/?fingerprint={FINGERPRINT}"
    )
    assert format_pairing(PLAIN) == f"scanxfer://pc.2_b:{SECRET}@pi.lab.example:6000/?tls=off"
    assert format_pairing(IPV6) == (
        f"scanxfer://lab-pc:{SECRET}@[fe80::1]:5000/?fingerprint={FINGERPRINT}"
    )


@pytest.mark.parametrize("pairing", [TLS, PLAIN, IPV6])
def test_a_line_reads_back_as_it_was_written(pairing: Pairing) -> None:
    assert parse_pairing(format_pairing(pairing)) == pairing


@pytest.mark.parametrize("wrapping", ["  {}\n", "'{}'", '"{}"', " '{}' "])
def test_quotes_and_spaces_copied_along_are_ignored(wrapping: str) -> None:
    assert parse_pairing(wrapping.format(format_pairing(TLS))) == TLS


def test_a_fingerprint_with_colons_and_capitals_is_accepted() -> None:
    shown = ":".join(FINGERPRINT.upper()[i : i + 2] for i in range(0, 64, 2))
    line = f"scanxfer://lab-pc:{SECRET}@192.168.1.50:5000/?fingerprint={shown}"
    assert parse_pairing(line) == TLS


def test_a_pairing_has_a_fingerprint_exactly_when_it_uses_tls() -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        Pairing("h", 1, "a", SECRET, None, True)
    with pytest.raises(ValueError, match="fingerprint"):
        Pairing("h", 1, "a", SECRET, FINGERPRINT, False)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "does not start with scanxfer://"),
        (f"http://lab-pc:{SECRET}@h:5000/?tls=off", "does not start"),
        ("scanxfer://h:5000/?tls=off", "NAME:KEY@"),
        ("scanxfer://lab-pc@h:5000/?tls=off", "NAME:KEY@"),
        ("scanxfer://lab-pc:short@h:5000/?tls=off", "43 characters"),
        (f"scanxfer://lab-pc:{SECRET[:-1]}!@h:5000/?tls=off", "base64url"),
        (f"scanxfer://lab-pc:{SECRET[:-1]}_@h:5000/?tls=off", "a character was changed"),
        (f"scanxfer://.hidden:{SECRET}@h:5000/?tls=off", "the sender's name (before the ':')"),
        (f"scanxfer://lab-pc:{SECRET}@h/?tls=off", "HOST:PORT"),
        (f"scanxfer://lab-pc:{SECRET}@h:0/?tls=off", "port from 1"),
        (f"scanxfer://lab-pc:{SECRET}@h:70000/?tls=off", "a port from 1 to 65535"),
        (f"scanxfer://lab-pc:{SECRET}@h:x/?tls=off", "a port from 1 to 65535"),
        (f"scanxfer://lab-pc:{SECRET}@999.1.1.1:5000/?tls=off", "not a host name or IP"),
        (f"scanxfer://lab-pc:{SECRET}@h:5000/", "?fingerprint="),
        (f"scanxfer://lab-pc:{SECRET}@h:5000/?tls=on", "?fingerprint="),
        (f"scanxfer://lab-pc:{SECRET}@h:5000/?tls=off&fingerprint={FINGERPRINT}", "?tls=off"),
        (f"scanxfer://lab-pc:{SECRET}@h:5000/?fingerprint=abc", "64 hex digits"),
        (f"scanxfer://lab-pc:{SECRET}@h:5000/?fingerprint={FINGERPRINT}&x=1", "?fingerprint="),
        (f"scanxfer://lab-pc:{SECRET}@h:5000/extra?tls=off", "after the address"),
        (f"scanxfer://lab-pc:{SECRET}@h:5000/?tls=off#frag", "after the address"),
    ],
)
def test_bad_lines_are_refused_saying_what_to_do(line: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_pairing(line)
    message = str(caught.value)
    assert message.startswith("not a pairing line: ")
    assert message.endswith("copy the whole line printed by `scanxfer keys add`")
    assert reason in message


def _mangled(line: str) -> list[str]:
    """The line cut at every length, and with each of its characters changed or dropped."""
    cut = [line[:end] for end in range(len(line))]
    changed = [line[:i] + "AB"[line[i] == "A"] + line[i + 1 :] for i in range(len(line))]
    dropped = [line[:i] + line[i + 1 :] for i in range(len(line))]
    swapped = [line.replace(":", "@", 1), line.replace("@", ":"), line.replace(f"{SECRET}@", "")]
    return cut + changed + dropped + swapped


@pytest.mark.parametrize("pairing", [TLS, PLAIN, IPV6])
def test_no_error_quotes_any_part_of_the_key(pairing: Pairing) -> None:
    pieces = {SECRET[i : i + 8] for i in range(len(SECRET) - 7)}
    refused = 0
    for line in _mangled(format_pairing(pairing)):
        try:
            parse_pairing(line)
        except ValueError as exc:
            refused += 1
            leaked = [piece for piece in pieces if piece in str(exc)]
            assert not leaked, (line, str(exc))
    assert refused > len(format_pairing(pairing))  # the check above ran many times


# --- writing the sender's settings ------------------------------------------------------------


def test_a_new_file_starts_from_the_commented_defaults(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "sender.yaml"
    write_sender_config(path, TLS)
    config = load_sender_config(path)
    assert (str(config.receiver), config.name, config.key) == (
        "192.168.1.50:5000",
        "lab-pc",
        SECRET,
    )
    assert (config.fingerprint, config.tls) == (FINGERPRINT, True)
    text = path.read_text()
    assert "# Files to send, as shell wildcards on the file name." in text
    assert text.count("\nkey: ") == 1 and text.count("\nreceiver: ") == 1
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(path.parent)) == ["sender.yaml"]  # no temporary file left


def test_an_existing_file_keeps_its_other_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "sender.yaml"
    path.write_text(
        "# my instrument PC\n"
        "receiver: 10.0.0.1:5000   # the old Pi\n"
        "watch_dir: /data/scans\n"
        "\n"
        "# keep the files\n"
        "after_send: keep\n"
        "tls: false\n"
        "patterns:\n"
        "  - '*.npy'\n"
        "  - '*.npz'"  # no newline at the end
    )
    write_sender_config(path, IPV6)
    assert path.read_text() == (
        "# my instrument PC\n"
        'receiver: "[fe80::1]:5000"\n'
        "watch_dir: /data/scans\n"
        "\n"
        "# keep the files\n"
        "after_send: keep\n"
        "tls: true\n"
        "patterns:\n"
        "  - '*.npy'\n"
        "  - '*.npz'\n"
        "\n"
        "# Set by `scanxfer pair`.\n"
        'name: "lab-pc"\n'
        f'key: "{SECRET}"\n'
        f'fingerprint: "{FINGERPRINT}"\n'
    )
    config = load_sender_config(path)
    assert (config.receiver.host, config.watch_dir, config.patterns) == (
        "fe80::1",
        Path("/data/scans"),
        ("*.npy", "*.npz"),
    )


def test_pairing_again_replaces_the_previous_pairing(tmp_path: Path) -> None:
    path = tmp_path / "sender.yaml"
    write_sender_config(path, TLS)
    write_sender_config(path, PLAIN)
    config = load_sender_config(path)
    assert (str(config.receiver), config.name, config.fingerprint, config.tls) == (
        "pi.lab.example:6000",
        "pc.2_b",
        None,
        False,
    )
    assert path.read_text().count("\nkey: ") == 1


def test_a_value_spread_over_several_lines_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "sender.yaml"
    path.write_text("receiver: >-\n  10.0.0.1:5000\nname: x\n")
    write_sender_config(path, TLS)
    assert path.read_text().startswith('receiver: "192.168.1.50:5000"\nname: "lab-pc"\n')


def test_a_file_that_would_not_load_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "sender.yaml"
    original = "window: 0\nreceiver: 10.0.0.1:5000\n"
    path.write_text(original)
    with pytest.raises(ConfigError) as caught:
        write_sender_config(path, TLS)
    assert f"{path}, line 1: key 'window'" in str(caught.value)
    assert "left unchanged" in str(caught.value)
    assert path.read_text() == original
    assert os.listdir(tmp_path) == ["sender.yaml"]


def test_a_symlinked_settings_file_is_edited_where_it_is(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "sender.yaml"
    real.parent.mkdir()
    real.write_text("watch_dir: /data\n")
    link = tmp_path / "sender.yaml"
    link.symlink_to(real)
    write_sender_config(link, TLS)
    assert link.is_symlink()
    assert load_sender_config(real).key == SECRET
