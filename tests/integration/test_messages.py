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
    assert result.returncode == 4
    blocked = f"cannot store into {tmp_path / 'a-file' / 'incoming'}: "
    assert result.stderr.count(blocked) == 1, result.stderr
    assert f"{blocked}{tmp_path / 'a-file'} is not a folder" in result.stderr
    assert "Traceback" not in result.stderr
