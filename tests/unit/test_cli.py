"""The command line: help, version, option checking, exit statuses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import scanxfer
from scanxfer import config
from scanxfer.cli import build_parser, main, receiver_config, sender_config
from scanxfer.config import Address

REPO = Path(scanxfer.__file__).parents[1]


@pytest.fixture(autouse=True)
def _no_system_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "RECEIVER_CONFIG_PATH", tmp_path / "etc-receiver.yaml")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "--version") == (0, f"scanxfer {scanxfer.__version__}\n", "")


def test_version_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scanxfer", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, f"scanxfer {scanxfer.__version__}\n")


def test_top_level_help_lists_commands_and_exit_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = _run(capsys, "--help")
    assert status == 0
    for text in ("receive", "send", "simulate", "verify", "--verbose", "--quiet"):
        assert text in out
    assert "exit status:" in out  # which ones: tests/integration/test_exit_codes.py


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("receive", ["--config", "--listen", "--dir", "--state-dir", "--verbose", "example:"]),
        ("send", ["--config", "--to", "--watch", "--once", "--resend", "--quiet", "examples:"]),
        ("simulate", ["--dir", "--count", "--interval", "--shape", "--dtype", "--chunks"]),
        ("verify", ["FILE", "--source", "--dest", "--scans", "--incoming", "examples:"]),
    ],
)
def test_command_help(capsys: pytest.CaptureFixture[str], command: str, options: list[str]) -> None:
    status, out, _ = _run(capsys, command, "--help")
    assert status == 0
    assert out.startswith(f"usage: scanxfer {command} ")
    for option in options:
        assert option in out


def test_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(capsys)
    assert status == 2
    assert "the following arguments are required: COMMAND" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shape", "512x0"], "argument --shape: expected positive whole numbers joined by 'x'"),
        (["--shape", "big"], "argument --shape: expected positive whole numbers joined by 'x'"),
        (["--shape", "-4"], "argument --shape: expected positive whole numbers joined by 'x'"),
        (["--dtype", "uint17"], "argument --dtype: 'uint17' is not a NumPy dtype"),
        (["--dtype", "object"], "argument --dtype: 'object' holds Python objects"),
        (["--dtype", "U"], "argument --dtype: 'U' has no size"),
        (["--count", "0"], "argument --count: expected a whole number of at least 1, got '0'"),
        (["--chunks", "two"], "argument --chunks: expected a whole number of at least 1"),
        (["--interval", "soon"], "argument --interval: expected a duration like '30s'"),
    ],
)
def test_bad_simulate_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, _, err = _run(capsys, "simulate", *argv)
    assert status == 2
    assert f"scanxfer simulate: error: {message}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["receive", "--listen", "pi.local"], "command line: key 'listen': expected HOST:PORT"),
        (["receive", "--listen", ":65536"], "command line: key 'listen': expected a port from 0"),
        (["send", "--to", "pi:0"], "command line: key 'receiver': expected a port from 1 to"),
        (["send", "--to", "::1:5000"], "command line: key 'receiver': write IPv6 addresses in"),
    ],
)
def test_bad_address(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    status, _, err = _run(capsys, *argv)
    assert status == 2
    assert err.startswith(f"scanxfer: error: {message}")


def test_config_file_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "receiver.yaml"
    path.write_text("windw: 8\n")
    status, _, err = _run(capsys, "receive", "-c", str(path))
    assert status == 2
    assert err == f"scanxfer: error: {path}, line 1: unknown key 'windw'; did you mean 'window'?\n"


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = _run(capsys, "send", "--config", str(tmp_path / "sender.yaml"))
    assert status == 2
    assert err == f"scanxfer: error: {tmp_path / 'sender.yaml'}: no such file; check the path\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a.npy"], "give two files to compare, not 1"),
        (["a.npy", "b.npy", "c.npy"], "give two files to compare, not 3"),
        (["--source", "scans"], "--source and --dest go together"),
        (["--dest", "incoming"], "--source and --dest go together"),
        (["a.npy", "b.npy", "--source", "s", "--dest", "d"], "choose one"),
        (["--source", "s", "--dest", "d", "--scans", "x"], "choose one"),
    ],
)
def test_verify_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, _, err = _run(capsys, "verify", *argv)
    assert status == 2
    assert err.startswith("usage: scanxfer verify")
    assert f"scanxfer verify: error: {message}" in err


def test_receive_options_override_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["receive", "--listen", ":6000", "--dir", "in", "--state-dir", str(tmp_path)]
    )
    settings = receiver_config(args)
    assert settings.listen == Address("0.0.0.0", 6000)
    assert settings.incoming_dir == Path("in")
    assert settings.partial_dir is None  # the store's default, inside incoming_dir


def test_send_options_override_settings(tmp_path: Path) -> None:
    path = tmp_path / "sender.yaml"
    path.write_text("window: 7\nwatch_dir: /data/scans\n")
    args = build_parser().parse_args(["send", "-c", str(path), "--to", "pi:5001", "--watch", "w"])
    settings = sender_config(args)
    assert (settings.receiver, settings.watch_dir, settings.window) == (
        Address("pi", 5001),
        Path("w"),
        7,
    )


@pytest.mark.parametrize(
    ("argv", "verbose", "quiet"),
    [
        (["simulate"], 0, False),
        (["-v", "simulate"], 1, False),
        (["simulate", "-vv"], 2, False),
        (["-v", "simulate", "-q"], 1, True),
        (["-q", "verify"], 0, True),
    ],
)
def test_verbosity_before_or_after_the_command(argv: list[str], verbose: int, quiet: bool) -> None:
    args = build_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


def test_simulate_defaults() -> None:
    args = build_parser().parse_args(["simulate"])
    assert (args.dir, args.count, args.interval, args.shape, args.dtype, args.chunks) == (
        Path("scans"),
        10,
        1.0,
        (512, 512),
        "uint16",
        4,
    )


def test_simulate_parses_shape_and_interval() -> None:
    args = build_parser().parse_args(["simulate", "--shape", "4X4x2", "--interval", "250ms"])
    assert (args.shape, args.interval) == ((4, 4, 2), 0.25)


# --- wiring to the real modules, once they exist ------------------------------------------------


def test_simulate_then_verify(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("scanxfer.simulate")
    pytest.importorskip("scanxfer.verify")
    scans = tmp_path / "scans"
    argv = ["simulate", "--dir", str(scans), "--count", "2", "--interval", "0", "--shape", "8x8"]
    assert _run(capsys, *argv)[0] == 0
    written = sorted(path for path in scans.rglob("*.npy"))
    assert len(written) == 2
    copy = tmp_path / "copy"
    shutil.copytree(scans, copy)
    assert _run(capsys, "verify", "--source", str(scans), "--dest", str(copy))[0] == 0
    assert _run(capsys, "verify", str(written[0]), str(copy / written[0].name))[0] == 0
    assert _run(capsys, "verify", str(written[0]), str(written[1]))[0] == 1


def test_receive_check_validates_the_settings_and_exits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"state_dir: {tmp_path / 'state'}\n")
    assert main(["receive", "--check", "-c", str(good)]) == 0
    assert not (tmp_path / "state").exists()  # checked, not started
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_file_size: lots\n")
    assert main(["receive", "--check", "-c", str(bad)]) == 2
    assert "key 'max_file_size'" in capsys.readouterr().err


def test_resend_without_a_wildcard_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    watch = tmp_path / "scans"
    watch.mkdir()
    status, _, err = _run(capsys, "send", "--once", "--watch", str(watch), "--resend", " ")
    assert status == 2
    assert "--resend needs a wildcard" in err
    assert build_parser().parse_args(["send", "--resend", "a*", "--resend", "b/*"]).resend == [
        "a*",
        "b/*",
    ]
