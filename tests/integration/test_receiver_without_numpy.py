"""`scanxfer receive` on a machine without numpy, as the Debian package allows (it only
recommends python3-numpy): both doors start, and the prototype door checks the .npy headers
numpy writes by itself. The receiver runs with numpy hidden (tests/without_numpy.py)."""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from ..procs import Proc
from ..without_numpy import scanxfer_argv
from .harness import GIVE_UP_SECONDS, install_credentials, unused_port, wait_until


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Proc, Path, int]]:
    """A receiver without numpy, its incoming directory, and its prototype door's port."""
    state, incoming = tmp_path / "state", tmp_path / "incoming"
    install_credentials(state)
    config = tmp_path / "receiver.yaml"
    config.write_text(
        f"legacy_listen: 127.0.0.1:{unused_port()}\nlegacy_allow: ['127.0.0.1']\n"
        "min_free_space: 0\n"
    )
    places = ["--dir", str(incoming), "--state-dir", str(state)]
    argv = scanxfer_argv("receive", "-c", str(config), "--listen", "127.0.0.1:0", *places)
    child = Proc("receiver", argv)
    try:
        child.wait_for(r"listening on 127\.0\.0\.1:\d+", 30)
        port = int(child.wait_for(r"prototype door at 127\.0\.0\.1:(\d+) is open", 30)[1])
        yield child, incoming, port
    finally:
        if child.process.poll() is None:
            assert child.stop() == 0, child.log_tail()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    npy_format.write_array(buffer, array)
    return buffer.getvalue()


def prototype_send(port: int, data: bytes) -> None:
    """As the prototype's sender: the length, the file, then wait for the door to close."""
    with socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP_SECONDS) as sock:
        sock.sendall(struct.pack(">Q", len(data)) + data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass


ARRAYS = {
    "uint16": np.arange(4096, dtype=np.uint16).reshape(64, 64),
    "text": np.array(["alpha", "beta", "gamma"], dtype="<U7"),
    "padded records": np.zeros(10, dtype=np.dtype([("id", "<u1"), ("value", "<f8")], align=True)),
    "times": np.arange(5).astype("datetime64[ms]"),
}


def test_the_receiver_stores_the_usual_dtypes_without_numpy(
    receiver: tuple[Proc, Path, int],
) -> None:
    child, incoming, port = receiver
    payloads = [npy_bytes(array) for array in ARRAYS.values()]
    for data in payloads:
        prototype_send(port, data)
    wait_until(lambda: len(list(incoming.glob("*.npy"))) == len(payloads), "all stored", child)
    stored = sorted(path.read_bytes() for path in incoming.glob("*.npy"))
    assert stored == sorted(payloads)
    assert "Traceback" not in child.log


def test_a_dtype_only_numpy_can_size_is_refused_with_what_to_install(
    receiver: tuple[Proc, Path, int],
) -> None:
    child, incoming, port = receiver
    titled = np.zeros(3, dtype=[(("the x coordinate", "x"), "<f8")])
    prototype_send(port, npy_bytes(titled))
    child.wait_for(r"without numpy, so they are treated as incomplete: install python3-numpy", 30)
    child.wait_for(r"refused a prototype file: .*nothing stored", 30)
    prototype_send(port, npy_bytes(ARRAYS["uint16"]))  # the door lives on
    wait_until(lambda: len(list(incoming.glob("*.npy"))) == 1, "the next file stored", child)
    assert "Traceback" not in child.log
