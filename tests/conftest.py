"""Fixtures every test gets: a private home, no inherited systemd environment, and the
"scanxfer" logger put back as it was."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Hypothesis' deadline fails a test on wall-clock time, which a loaded CI machine can exceed.
settings.register_profile("scanxfer", deadline=None)
settings.load_profile("scanxfer")

# Set by systemd or a journald-connected shell; a test that wants them sets them itself.
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Point HOME and the XDG directories at a fresh directory, so no test reads the real
    ~/.config/scanxfer/sender.yaml or writes into the real ~/scans."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    for name in _SYSTEMD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _restore_scanxfer_logger() -> Iterator[None]:
    """Undo setup_logging() (which main() calls) so one test's verbosity cannot leak."""
    logger = logging.getLogger("scanxfer")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
