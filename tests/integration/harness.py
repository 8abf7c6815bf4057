"""Real scanxfer processes on loopback: a receiver, `send --once` runs, scan files."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from pathlib import Path

import numpy as np

from scanxfer.demo import Child


class ReceiverProcess:
    """`scanxfer receive` on 127.0.0.1 with its directories under one root."""

    def __init__(self, root: Path, port: int = 0, config: Path | None = None) -> None:
        self.root = root
        self.config = config
        self.incoming = root / "incoming"
        self.state = root / "state"
        self.port = port
        self.child: Child | None = None

    def start(self) -> ReceiverProcess:
        config = ["-c", str(self.config)] if self.config else []
        self.child = Child(
            "receiver",
            "receive",
            *config,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--dir",
            str(self.incoming),
            "--state-dir",
            str(self.state),
            echo=False,
        )
        self.port = int(self.child.wait_for(r"listening on \S+:(\d+)", 30).group(1))
        return self

    @property
    def log(self) -> str:
        return self.child.log if self.child else ""

    def partials(self) -> list[Path]:
        return sorted((self.state / "partial").glob("*.part"))

    def stored_files(self) -> list[str]:
        return sorted(
            path.relative_to(self.incoming).as_posix()
            for path in self.incoming.rglob("*")
            if path.is_file()
        )

    def stop(self, sig: int = 15) -> int:
        assert self.child is not None
        return self.child.stop(sig)


def sender_config(path: Path, port: int, watch: Path, **extra: str) -> Path:
    """A sender.yaml with fast retries, so tests exercise failures without waiting long."""
    settings = {
        "receiver": f"127.0.0.1:{port}",
        "watch_dir": str(watch),
        "state_dir": str(path.parent / "sender-state"),
        "retry_initial": "0.05s",
        "retry_max": "0.2s",
        "settle_seconds": "0.2s",
        **extra,
    }
    path.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
    return path


def send_once_in_background(config: Path) -> Child:
    return Child("sender", "send", "-c", str(config), "--once", echo=False)


def send_once(config: Path, timeout: float = 600) -> Child:
    sender = send_once_in_background(config)
    sender.wait(timeout)
    return sender


def write_scan(path: Path, shape: tuple[int, ...], seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 2**16, size=shape, dtype=np.uint16)
    np.save(path, data)
    return path


def write_big_scan(path: Path, size_mib: int) -> Path:
    """A valid .npy of about `size_mib` MiB, written in slices so the test stays small in RAM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = size_mib * 256  # 256 rows of 2048 uint16 = 1 MiB
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(rows, 2048))
    rng = np.random.default_rng(size_mib)
    for start in range(0, rows, 4096):
        block = array[start : start + 4096]
        block[:] = rng.integers(0, 2**16, size=block.shape, dtype=np.uint16)
    array.flush()
    del array
    return path


def count_matches(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, flags=re.MULTILINE))


class StallingProxy:
    """A TCP relay on 127.0.0.1 that stops forwarding upstream after `stall_after` bytes.

    It freezes a transfer at a known point, so a test can kill the receiver
    mid-file without racing the transfer to its end.
    """

    def __init__(self, target_port: int, stall_after: int) -> None:
        self.target_port, self.stall_after = target_port, stall_after
        self.forwarded = 0
        self.stalled = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self._sockets += [client, upstream]
                threading.Thread(
                    target=self._pump, args=(client, upstream, True), daemon=True
                ).start()
                threading.Thread(
                    target=self._pump, args=(upstream, client, False), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                if upstream:
                    data = data[: self.stall_after - self.forwarded]
                    self.forwarded += len(data)
                sink.sendall(data)
                if upstream and self.forwarded >= self.stall_after:
                    self.stalled.set()
                    self._closing.wait()
                    return

    def close(self) -> None:
        """Drop every relayed connection and stop accepting: the sender sees a dead link."""
        self._closing.set()
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
