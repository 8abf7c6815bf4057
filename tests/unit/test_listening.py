"""The running receiver's record of where it listens, which `scanxfer keys add` believes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scanxfer.config import Address
from scanxfer.keys.listening import Listening, listening_path, recorded, running_receiver


def test_the_record_lasts_as_long_as_the_block(tmp_path: Path) -> None:
    with recorded(tmp_path, Address("0.0.0.0", 6000)):
        assert running_receiver(tmp_path) == Listening(os.getpid(), Address("0.0.0.0", 6000))
        assert listening_path(tmp_path).stat().st_mode & 0o777 == 0o644
    assert not listening_path(tmp_path).exists()
    assert running_receiver(tmp_path) is None


def test_a_record_left_by_a_process_gone_is_ignored(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    document = {"version": 1, "pid": int(gone.stdout), "started": 1, "listen": ":6000"}
    listening_path(tmp_path).write_text(json.dumps(document))
    assert running_receiver(tmp_path) is None


def test_a_record_of_a_process_that_had_the_same_pid_before_is_ignored(tmp_path: Path) -> None:
    document = {"version": 1, "pid": os.getpid(), "started": 1, "listen": "0.0.0.0:6000"}
    listening_path(tmp_path).write_text(json.dumps(document))
    assert running_receiver(tmp_path) is None


def test_a_garbled_record_is_ignored(tmp_path: Path) -> None:
    for text in ("{", '{"pid": "x", "listen": ":6000"}', '{"pid": 1}', "[]"):
        listening_path(tmp_path).write_text(text)
        assert running_receiver(tmp_path) is None, text


def test_a_record_that_cannot_be_written_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no such dir"
    with recorded(missing, Address("0.0.0.0", 6000)):
        assert running_receiver(missing) is None
    assert "keys add` will put the port of the settings" in caplog.text
