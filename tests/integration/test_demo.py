"""`make demo`, the first command the README gives a new user, works end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .harness import GIVE_UP_SECONDS


def test_the_demo_pairs_a_sender_delivers_and_verifies(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "scanxfer.demo"],
        cwd=tmp_path,  # it works in ./demo, like `make demo` in the source tree
        capture_output=True,
        text=True,
        timeout=GIVE_UP_SECONDS,
        check=False,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "12 files identical, 0 missing, 0 different" in output
    assert "result: OK" in output
    # Paired as a user pairs: the key is in the sender's settings, a hash of it on the receiver.
    settings = (tmp_path / "demo" / "sender.yaml").read_text()
    assert "key: " in settings and "fingerprint: " in settings
    assert "demo-pc" in (tmp_path / "demo" / "state" / "keys.json").read_text()
