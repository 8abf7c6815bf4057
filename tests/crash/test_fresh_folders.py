"""Folders the programs make themselves must survive a power cut with what was made durable
in them: a regression test for each such folder the crash tests found not synced."""

from __future__ import annotations

import sys
from pathlib import Path

from scanxfer.keys import KEYS_FILE_NAME, KeyFile
from scanxfer.tls import ensure_identity

from ..integration.harness import (
    GIVE_UP_SECONDS,
    install_credentials,
    send_once_in_background,
    sender_config,
    write_scan,
)
from ..procs import Proc
from .mount import powercut_mount
from .scenario import acked_in, cut_power, digest


def test_an_incoming_folder_made_at_the_first_start_keeps_acked_files(tmp_path: Path) -> None:
    """The receiver makes incoming/ and its partial folder; cut just after the first ACK."""
    scan = write_scan(tmp_path / "scans" / "s.npy", (4096,), 1)
    with powercut_mount(tmp_path / "fs") as fs:
        install_credentials(fs.live / "state")  # paired before: durable
        fs.mount()
        argv = [
            sys.executable, "-m", "scanxfer", "receive", "--listen", "127.0.0.1:0",
            "--dir", str(fs.mnt / "incoming"), "--state-dir", str(fs.mnt / "state"),
        ]  # fmt: skip
        receiver = Proc("receiver", fs.traced(argv))
        sender = None
        try:
            port = receiver.wait_for(r"listening on \S+:(\d+)", GIVE_UP_SECONDS).group(1)
            config = sender_config(tmp_path / "sender.yaml", int(port), tmp_path / "scans")
            sender = send_once_in_background(config)
            assert sender.wait(GIVE_UP_SECONDS) == 0, sender.log
        finally:
            cut_power(fs, receiver)
        assert acked_in(sender.log) == {"s.npy": "s.npy"}
        stored = fs.live / "incoming" / "s.npy"
        assert stored.exists(), "an ACKed file was lost with the folder the receiver made"
        assert digest(stored) == digest(scan)


def test_a_state_folder_made_by_keys_add_keeps_the_keys_and_identity(tmp_path: Path) -> None:
    """`scanxfer keys add` on a new receiver makes the state folder: a cut must not undo it,
    or the sender's key and the certificate it pinned are gone."""
    with powercut_mount(tmp_path / "fs") as fs:
        fs.mount()
        state = fs.mnt / "var" / "state"
        KeyFile(state / KEYS_FILE_NAME).add("instrument")
        fingerprint = ensure_identity(state, "test receiver").fingerprint
        fs.freeze()
        fs.cut()
        survivor = fs.live / "var" / "state"
        assert [entry.name for entry in KeyFile(survivor / KEYS_FILE_NAME).entries()] == [
            "instrument"
        ]
        assert ensure_identity(survivor, "test receiver").fingerprint == fingerprint
