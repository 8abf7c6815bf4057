"""Messages say what happened once, in words that read right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import scanxfer

REPO = Path(scanxfer.__file__).parents[1]


def test_a_storage_folder_that_cannot_be_made_is_named_once(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    result = subprocess.run(
        [sys.executable, "-m", "scanxfer", "receive", "--listen", "127.0.0.1:0", "--dir",
         str(tmp_path / "a-file" / "incoming"), "--state-dir", str(tmp_path / "state")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stderr.count("cannot use the storage directories") == 1, result.stderr
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
        f"is not closed on that line, so the value runs on to the next ' on line 43; end the "
        f"value with ' on line 40\n"
    )
