"""The test run itself fails when a test leaves a process running (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import scanxfer

REPO = Path(scanxfer.__file__).parents[1]

LEAKY_TEST = """
import subprocess


def test_starts_a_daemon_and_forgets_it() -> None:
    # Double-forked: its parent exits at once, as a daemonising server's would.
    subprocess.run(["sh", "-c", "sleep 600 & exit 0"], check=True)
"""

TIDY_TEST = """
import subprocess


def test_starts_a_process_and_waits_for_it() -> None:
    subprocess.run(["sh", "-c", "sleep 0.1 & wait"], check=True)
"""


def run_pytest_on(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(source)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            "--rootdir",
            str(tmp_path),
            str(probe),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_process_left_running_fails_the_run_and_is_killed(tmp_path: Path) -> None:
    result = run_pytest_on(tmp_path, LEAKY_TEST)
    assert result.returncode == 1, result.stdout
    assert "1 passed" in result.stdout  # the test itself passed: the run failed after it
    assert "left 1 process(es) running (now killed)" in result.stdout
    assert "sleep 600" in result.stdout
    still_running = subprocess.run(["pgrep", "-f", "^sleep 600$"], capture_output=True)
    assert still_running.returncode == 1, "the leftover was not killed"


def test_a_tidy_run_passes(tmp_path: Path) -> None:
    result = run_pytest_on(tmp_path, TIDY_TEST)
    assert result.returncode == 0, result.stdout
    assert "process(es) running" not in result.stdout
