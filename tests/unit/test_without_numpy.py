"""Without numpy: the receiver runs, and the commands that need it say what to install.

The Debian package only recommends python3-numpy. These run scanxfer in a child process with
numpy hidden (tests/without_numpy.py), so anything that still imports it fails here.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from scanxfer.npy import _itemsize
from tests import without_numpy

MISSING = "needs python3-numpy: sudo apt install python3-numpy"


def run_without_numpy(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "a.npy", "b.npy"],
        ["verify"],
        ["simulate", "--count", "1"],
        ["simulate", "--dtype", "float32", "--count", "1"],
    ],
    ids=["verify-pair", "verify-latest", "simulate", "simulate-dtype"],
)
def test_commands_that_need_numpy_say_what_to_install(tmp_path: Path, args: list[str]) -> None:
    result = run_without_numpy(without_numpy.scanxfer_argv(*args), tmp_path)
    command = args[0]
    assert result.stderr == f"scanxfer: error: 'scanxfer {command}' {MISSING}\n"
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []  # simulate wrote nothing


def test_receive_check_runs_without_numpy(tmp_path: Path) -> None:
    args = ["--listen", "127.0.0.1:0", "--dir", "in", "--state-dir", "state"]
    result = run_without_numpy(without_numpy.scanxfer_argv("receive", "--check", *args), tmp_path)
    stored_in = (tmp_path / "in").resolve()
    assert (result.returncode, result.stderr) == (
        0,
        f"scanxfer: settings are valid, and files can be stored in {stored_in}\n",
    )


def test_every_module_the_receiver_runs_imports_without_numpy() -> None:
    code = (
        "import importlib, pkgutil\n"
        "import scanxfer.cli, scanxfer.receiver, scanxfer.store, scanxfer.npy\n"
        "for package in (scanxfer.receiver, scanxfer.store):\n"
        "    for module in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "print(sorted(name for name in sys.modules if name.startswith('scanxfer.receiver.')))\n"
    )
    result = subprocess.run(
        without_numpy.python_argv(code), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "scanxfer.receiver.prototype_door" in result.stdout


def test_the_hidden_numpy_really_is_hidden() -> None:
    result = subprocess.run(
        without_numpy.python_argv("import numpy"), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'numpy'" in result.stderr


@pytest.fixture
def numpy_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process: `import numpy...` fails as if numpy were not installed."""
    for name in ("numpy", "numpy.lib", "numpy.lib.format"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.usefixtures("numpy_missing")
@pytest.mark.parametrize(
    ("descr", "size"),
    [
        ("<u2", 2),
        ("<U7", 28),
        ("|S5", 5),
        ("|V12", 12),
        ("<M8[ns]", 8),
        ("<m8[25s]", 8),
        ([("x", "<i4"), ("", "|V4"), ("y", ">f2", (2, 3))], 20),
        ([("pos", [("x", "<f8"), ("y", "<f8")]), ("flag", "|b1")], 17),
    ],
)
def test_the_dtypes_numpy_writes_are_sized_without_numpy(descr: object, size: int) -> None:
    assert _itemsize(descr) == size


@pytest.mark.usefixtures("numpy_missing")
@pytest.mark.parametrize("descr", ["|O", [("a", "<f4"), ("b", "|O")], 7, None])
def test_objects_and_non_dtypes_are_refused_without_numpy(
    descr: object, caplog: pytest.LogCaptureFixture
) -> None:
    assert _itemsize(descr) is None
    assert not caplog.records  # a verdict, not a missing tool


@pytest.mark.usefixtures("numpy_missing")
def test_a_dtype_only_numpy_can_size_is_refused_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    titled = [(("the x coordinate", "x"), "<f8")]
    with caplog.at_level(logging.WARNING, logger="scanxfer"):
        assert _itemsize(titled) is None
    [record] = caplog.records
    assert "install python3-numpy (sudo apt install python3-numpy)" in record.getMessage()
    assert "the x coordinate" in record.getMessage()


def test_a_dtype_only_numpy_can_size_is_sized_by_numpy_when_installed() -> None:
    assert _itemsize([(("the x coordinate", "x"), "<f8")]) == 8
