"""Fixtures for the end-to-end tests: live receivers and a directory nothing may touch."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanxfer.tls import TLS_DIR_NAME

from .attack import QUICK, StartReceiver
from .harness import ReceiverProcess


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverProcess]:
    process = ReceiverProcess(tmp_path / "pi").start()
    yield process
    if process.child and process.child.process.returncode is None:
        process.stop()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside incoming that nothing may ever write into."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[StartReceiver]:
    """Start receivers with QUICK settings plus the given ones; all are stopped afterwards."""
    started: list[ReceiverProcess] = []

    def start(name: str = "pi", own_identity: bool = False, **settings: str) -> ReceiverProcess:
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            "".join(f"{key}: {value}\n" for key, value in {**QUICK, **settings}.items())
        )
        receiver = ReceiverProcess(tmp_path / name, config=config)
        if own_identity:  # it makes a certificate of its own at start
            shutil.rmtree(receiver.state / TLS_DIR_NAME)
        started.append(receiver)
        return receiver.start()

    yield start
    for receiver in started:
        if receiver.child is not None and receiver.child.process.poll() is None:
            receiver.stop()


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder anyone may enter (pytest's own are root's alone), for a check run as another
    user, such as the service's (nobody in these tests)."""
    path = Path(tempfile.mkdtemp(prefix="scanxfer-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)
