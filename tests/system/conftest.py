"""Fixtures of the system tests: they need root, the host tools that `.ci/run` installs, the
.deb that `make deb` builds, and (except the package checks) a booted container."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .container import require_host_tools

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deb() -> Path:
    """The package exactly as a user builds it: `make deb` in the source tree."""
    require_host_tools("make", "dpkg-buildpackage")
    result = subprocess.run(
        ["make", "--no-print-directory", "deb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"make deb failed:\n{result.stdout[-3000:]}{result.stderr}"
    return ROOT / "scanxfer-receiver.deb"
