"""The sender's transports are chosen by name, and what differs between them comes with the kind."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanxfer import sender
from scanxfer.config import SenderConfig, load_sender_config
from scanxfer.errors import ExitCode
from scanxfer.sender.session import NOT_PAIRED

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """`sender.run` installs its own handlers; the test process keeps its."""
    handlers = {number: signal.getsignal(number) for number in SIGNALS}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


def unpaired(tmp_path: Path) -> SenderConfig:
    """Settings without a key, watching a directory that does not exist."""
    file = tmp_path / "sender.yaml"
    file.write_text(f"watch_dir: {tmp_path / 'absent'}\nstate_dir: {tmp_path / 'state'}\n")
    return load_sender_config(file)


def test_the_transports_by_name() -> None:
    assert {name: kind.name for name, kind in sender.TRANSPORTS.items()} == {
        "scanxfer": "scanxfer",
        "prototype": "prototype",
    }


def test_the_scanxfer_transport_needs_a_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "scanxfer"):
        assert sender.run(unpaired(tmp_path), once=True, transport="scanxfer") == ExitCode.USAGE
    assert [record.getMessage() for record in caplog.records] == [NOT_PAIRED]


def test_the_prototype_transport_needs_no_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "scanxfer"):
        assert sender.run(unpaired(tmp_path), once=True, transport="prototype") == ExitCode.USAGE
    [error] = [record.getMessage() for record in caplog.records]
    assert error.startswith(f"watch directory {tmp_path / 'absent'} does not exist")
