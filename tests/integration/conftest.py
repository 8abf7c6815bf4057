"""Fixtures for the end-to-end tests: a live receiver and a directory nothing may touch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
