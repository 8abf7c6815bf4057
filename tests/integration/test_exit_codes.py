"""Every exit status of the one table (`scanxfer.errors.ExitCode`) is produced by a real command,
and the README's table and every `--help` say the same as that table.

A status added to the enum without a scenario here, or described differently in the README or in
a command's help, fails these tests.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import scanxfer
from scanxfer.cli import build_parser
from scanxfer.errors import ExitCode

REPO = Path(scanxfer.__file__).parents[1]
EXIT_LINE = re.compile(r"^  (\d+) +(.+)$")


def run(tmp_path: Path, *argv: str) -> int:
    """Run `scanxfer ARGV` as a user would, with a HOME of its own (no settings file)."""
    env = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "scanxfer", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    ).returncode


def identical_files_verify(tmp_path: Path) -> int:
    (tmp_path / "a").write_bytes(b"scan")
    (tmp_path / "b").write_bytes(b"scan")
    return run(tmp_path, "verify", str(tmp_path / "a"), str(tmp_path / "b"))


def different_files_verify(tmp_path: Path) -> int:
    (tmp_path / "a").write_bytes(b"scan")
    (tmp_path / "b").write_bytes(b"scam")
    return run(tmp_path, "verify", str(tmp_path / "a"), str(tmp_path / "b"))


def send_to_a_malformed_address(tmp_path: Path) -> int:
    return run(tmp_path, "send", "--once", "--to", "not an address", "--watch", str(tmp_path))


def receiver_that_cannot_store(tmp_path: Path) -> int:
    """A service that cannot start: its incoming directory would sit under a plain file."""
    (tmp_path / "a-file").write_text("not a directory\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return run(
        tmp_path,
        "receive",
        "--listen",
        f"127.0.0.1:{port}",
        "--dir",
        str(tmp_path / "a-file" / "incoming"),
        "--state-dir",
        str(tmp_path / "state"),
    )


def receiver_whose_port_is_taken(tmp_path: Path) -> int:
    """A service that cannot start: another program listens on its port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        return run(
            tmp_path,
            "receive",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(tmp_path / "state"),
        )


def simulate_stopped_by_ctrl_c(tmp_path: Path) -> int:
    scans = tmp_path / "scans"
    child = subprocess.Popen(
        [sys.executable, "-m", "scanxfer", "simulate", "--dir", str(scans), "--count", "1000"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_a_file(scans, child)
        child.send_signal(signal.SIGINT)
        return child.wait(timeout=60)
    finally:
        child.kill()
        child.wait()


def wait_for_a_file(directory: Path, child: subprocess.Popen[bytes]) -> None:
    """Wait until the child has started writing, so SIGINT lands in the command itself."""
    for _ in range(600):
        if child.poll() is not None:
            pytest.fail(f"simulate exited with {child.returncode} before writing anything")
        if directory.is_dir() and any(directory.rglob("*")):
            return
        time.sleep(0.1)
    pytest.fail("simulate wrote nothing within a minute")


SCENARIOS: dict[ExitCode, Callable[[Path], int]] = {
    ExitCode.OK: identical_files_verify,
    ExitCode.FAILED: different_files_verify,
    ExitCode.USAGE: send_to_a_malformed_address,
    ExitCode.UNREACHABLE: receiver_whose_port_is_taken,
    ExitCode.STORAGE: receiver_that_cannot_store,
    ExitCode.INTERRUPTED: simulate_stopped_by_ctrl_c,
}


def test_every_exit_status_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(ExitCode)


@pytest.mark.parametrize("status", list(ExitCode), ids=lambda status: status.name)
def test_the_status_is_produced_by_a_real_command(status: ExitCode, tmp_path: Path) -> None:
    assert SCENARIOS[status](tmp_path) == status


def readme_exit_table() -> dict[int, str]:
    """The rows of the README's exit-status table: | `N` | meaning |."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("| Exit status |") :].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\d+)` +\| (.+?) +\|$", section, re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def test_the_readme_table_is_the_enum() -> None:
    assert readme_exit_table() == {int(code): code.meaning for code in ExitCode}


def help_exit_statuses(parser_help: str) -> dict[int, str]:
    block = parser_help[parser_help.index("exit status:\n") :].split("\n\n", 1)[0]
    return {
        int(match[1]): match[2]
        for match in map(EXIT_LINE.match, block.splitlines()[1:])
        if match is not None
    }


def runnable_commands() -> dict[str, str]:
    """`--help` of the top level and of every command that runs (`keys add`, not `keys`)."""
    helps, pending = {}, [("scanxfer", build_parser())]
    while pending:
        name, parser = pending.pop()
        # argparse has no public way to list subparsers; its actions are stable since 3.2.
        groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if name == "scanxfer" or not groups:
            helps[name] = parser.format_help()
        for group in groups:
            pending += [(f"{name} {sub}", parser) for sub, parser in group.choices.items()]
    return helps


COMMANDS = runnable_commands()


def test_every_command_is_checked() -> None:
    assert {"scanxfer send", "scanxfer keys add", "scanxfer pair"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_help_lists_statuses_from_the_enum(command: str) -> None:
    listed = help_exit_statuses(COMMANDS[command])
    assert listed, f"`scanxfer {command} --help` lists no exit status"
    assert listed == {code: ExitCode(code).meaning for code in listed}
    if command == "scanxfer":
        assert set(listed) == set(ExitCode)
