"""Messages say what happened once, in words that read right."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import scanxfer

from ..procs import start_scanxfer
from .attack import scanxfer as run_scanxfer
from .harness import install_credentials, unused_port

REPO = Path(scanxfer.__file__).parents[1]


def test_a_storage_folder_that_cannot_be_made_is_named_once(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scanxfer",
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            str(tmp_path / "a-file" / "incoming"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4
    blocked = f"cannot store into {tmp_path / 'a-file' / 'incoming'}: "
    assert result.stderr.count(blocked) == 1, result.stderr
    assert f"{blocked}{tmp_path / 'a-file'} is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_receive_check_names_the_line_a_quote_was_left_open_on(tmp_path: Path) -> None:
    """The lab admin's case: a break on line 40 of receiver.yaml was reported on a later line."""
    lines = (REPO / "config" / "receiver.yaml").read_text().splitlines(keepends=True)
    settings = tmp_path / "receiver.yaml"
    settings.write_text("".join(lines[:39]) + "name: 'pi-lab\n" + "".join(lines[39:]))
    result = subprocess.run(
        [sys.executable, "-m", "scanxfer", "receive", "--check", "-c", str(settings)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"scanxfer: error: {settings}, line 40: YAML syntax error: the quote opened on line 40 "
        f"is not closed on that line, so the value runs on to the next ' on line 44; end the "
        f"value with ' on line 40\n"
    )


def test_a_restart_only_setting_set_back_needs_no_restart(tmp_path: Path) -> None:
    """Each reload is compared with the address in use, not with the reload before it."""
    port = unused_port()
    settings = tmp_path / "receiver.yaml"
    settings.write_text(f"listen: 127.0.0.1:{port}\n")
    install_credentials(tmp_path / "state")
    child = start_scanxfer(
        "receiver", "receive", "-c", str(settings), "--dir", str(tmp_path / "incoming"),
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    try:
        child.wait_for("listening on", 30)
        for reloads, listen in enumerate([port + 1, port, port, port + 2, port + 1], start=1):
            settings.write_text(f"listen: 127.0.0.1:{listen}\n")
            child.process.send_signal(signal.SIGHUP)
            child.wait_for("settings reloaded", 30, count=reloads)
    finally:
        assert child.stop() == 0
    about_listen = [line for line in child.log.splitlines() if "listen " in line]
    restart = "restart the receiver to apply it"
    assert about_listen == [
        f"scanxfer: warning: listen changed to 127.0.0.1:{port + 1}; {restart}",
        f"scanxfer: listen is back to 127.0.0.1:{port}, the value in use; no restart needed",
        f"scanxfer: warning: listen changed to 127.0.0.1:{port + 2}; {restart}",
        f"scanxfer: warning: listen changed to 127.0.0.1:{port + 1}; {restart}",
    ], child.log


def _receive(tmp_path: Path, listen: str) -> subprocess.CompletedProcess[str]:
    incoming, state = str(tmp_path / "incoming"), str(tmp_path / "state")
    return run_scanxfer("receive", "--listen", listen, "--dir", incoming, "--state-dir", state)


def test_a_port_in_use_asks_whether_another_receiver_runs(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _receive(tmp_path, f"127.0.0.1:{port}")
    assert result.returncode == 3
    assert result.stderr.splitlines()[-1] == (
        f"scanxfer: error: cannot listen on 127.0.0.1:{port}: the port is in use by another "
        f"program (is another receiver running? 'ss -ltnp' shows which program has it); stop "
        f"it, or choose another port in 'listen'"
    )


def test_an_address_this_host_lacks_is_named(tmp_path: Path) -> None:
    # 192.0.2.0/24 is reserved for documentation (RFC 5737): no interface here has it.
    result = _receive(tmp_path, "192.0.2.1:5000")
    assert result.returncode == 3
    assert result.stderr.splitlines()[-1] == (
        "scanxfer: error: cannot listen on 192.0.2.1:5000: no network interface of this machine "
        "has the address 192.0.2.1; fix 'listen' in the settings, e.g. ':5000' for all addresses"
    )
    assert "another receiver" not in result.stderr


def test_the_replace_hint_acts_on_the_same_state_dir(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    assert run_scanxfer("keys", "add", "lab-pc", "--state-dir", state).returncode == 0
    again = run_scanxfer("keys", "add", "lab-pc", "--state-dir", state)
    assert again.returncode == 1
    assert again.stderr == (
        "scanxfer: error: sender 'lab-pc' already has a key; to give it a new one (the old one "
        f"stops working), run: scanxfer keys add lab-pc --replace --state-dir {state}\n"
    )


def test_revoking_a_revoked_key_is_nothing_to_do(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    assert run_scanxfer("keys", "add", "lab-pc", "--state-dir", state).returncode == 0
    assert run_scanxfer("keys", "revoke", "lab-pc", "--state-dir", state).returncode == 0
    again = run_scanxfer("keys", "revoke", "lab-pc", "--state-dir", state)
    assert again.returncode == 0
    assert re.fullmatch(
        r"scanxfer: the key of lab-pc was already revoked on "
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; nothing to do\n",
        again.stderr,
    ), again.stderr
