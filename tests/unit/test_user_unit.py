"""`scanxfer install-user-unit`: the unit it writes, the settings it writes (or refuses to),
and the user manager it tells. The real `systemctl --user` is exercised in tests/system."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import scanxfer
from scanxfer.cli import main
from scanxfer.config import load_sender_config
from scanxfer.user_unit import systemd_quote

SHIPPED_UNIT = Path(scanxfer.__file__).parents[1] / "systemd" / "scanxfer-sender.service"


@pytest.fixture
def config_home() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"])


@pytest.fixture
def systemctl_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `systemctl` first on PATH that records its arguments: this machine has no user
    manager to reload."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl-calls"
    stub = bin_dir / "systemctl"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_the_unit_is_the_shipped_one_running_this_python(
    config_home: Path, systemctl_calls: Path
) -> None:
    assert main(["install-user-unit"]) == 0

    unit = config_home / "systemd" / "user" / "scanxfer-sender.service"
    written, shipped = unit.read_text().splitlines(), SHIPPED_UNIT.read_text().splitlines()
    assert len(written) == len(shipped)
    changed = [(a, b) for a, b in zip(written, shipped, strict=True) if a != b]
    assert changed == [
        (
            f"ExecStart={systemd_quote(sys.executable)} -m scanxfer send",
            "ExecStart=/usr/bin/scanxfer send",
        )
    ]
    assert systemctl_calls.read_text() == "--user daemon-reload\n"
    assert not (config_home / "scanxfer" / "sender.yaml").exists()


def test_to_and_watch_write_the_settings(
    config_home: Path, systemctl_calls: Path, tmp_path: Path
) -> None:
    status = main(["install-user-unit", "--to", "192.168.1.50:5001", "--watch", str(tmp_path)])

    assert status == 0
    assert (config_home / "scanxfer" / "sender.yaml").is_file()
    config = load_sender_config(None)
    assert (config.receiver.host, config.receiver.port) == ("192.168.1.50", 5001)
    assert config.watch_dir == tmp_path


def test_existing_settings_are_never_overwritten(
    config_home: Path, systemctl_calls: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = config_home / "scanxfer" / "sender.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text('receiver: "10.0.0.1:5000"\n')

    assert main(["install-user-unit", "--to", "10.0.0.2:5000"]) == 1

    assert settings.read_text() == 'receiver: "10.0.0.1:5000"\n'
    assert f"{settings} already exists" in capsys.readouterr().err
    assert not (config_home / "systemd").exists()


def test_a_bad_address_writes_nothing(config_home: Path, systemctl_calls: Path) -> None:
    assert main(["install-user-unit", "--to", "no-port-here"]) == 2
    assert not (config_home / "scanxfer").exists()
    assert not (config_home / "systemd").exists()


def test_without_systemctl_the_unit_is_still_written(
    config_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")

    assert main(["install-user-unit"]) == 0

    assert (config_home / "systemd" / "user" / "scanxfer-sender.service").is_file()
    assert "systemctl not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("/usr/bin/python3", "/usr/bin/python3"),
        ("/home/ann/my venv/bin/python", '"/home/ann/my venv/bin/python"'),
        ("/opt/100%/python", "/opt/100%%/python"),
        ("/opt/$HOME/python", "/opt/$$HOME/python"),
        ('/opt/a"b/python', '"/opt/a\\"b/python"'),
    ],
)
def test_systemd_quote(word: str, quoted: str) -> None:
    assert systemd_quote(word) == quoted
