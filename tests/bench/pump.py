"""The reference pump: the prototype's wire format made as durable as scanxfer, nothing more.

Per file the sender writes an 8-byte big-endian length, then the raw bytes with sendfile. The
receiver reads them with recv_into into one 1 MiB buffer, writes them to a partial file,
fsyncs it, renames it into the incoming directory, fsyncs that directory and answers one byte;
the sender waits for that byte before the next file, a round trip per file as in the
prototype. No names, no checksum, no resume, no journal: what is left is the cost of moving
bytes durably, the practical limit scanxfer is measured against.

    python -m tests.bench.pump receive --dir DIR
    python -m tests.bench.pump send --to 127.0.0.1:PORT --source DIR --report FILE
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

BUFFER = 1 << 20  # scanxfer's receive buffer too
LENGTH = struct.Struct(">Q")
ACK = b"\x01"


def receive(directory: Path) -> int:
    """Accept one sender on a free loopback port and store its files until it hangs up."""
    partial, incoming = directory / "partial", directory / "incoming"
    partial.mkdir(parents=True)
    incoming.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", file=sys.stderr, flush=True)
        sock, _ = listener.accept()
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = memoryview(bytearray(BUFFER))
        dir_fd = os.open(incoming, os.O_RDONLY | os.O_DIRECTORY)
        try:
            number = 0
            while (size := _read_length(sock, buffer)) is not None:
                number += 1
                name = f"{number:06d}.npy"
                _store(sock, buffer, size, partial / f"{name}.part", incoming / name)
                os.fsync(dir_fd)
                sock.sendall(ACK)
        finally:
            os.close(dir_fd)
    print(f"received {number} files", file=sys.stderr, flush=True)
    return 0


def _read_length(sock: socket.socket, buffer: memoryview) -> int | None:
    """The next file's length, or None when the sender has hung up between files."""
    got = 0
    while got < LENGTH.size:
        count = sock.recv_into(buffer[got : LENGTH.size])
        if count == 0:
            if got:
                raise ConnectionError("sender hung up inside a length header")
            return None
        got += count
    return int(LENGTH.unpack(buffer[: LENGTH.size])[0])


def _store(sock: socket.socket, buffer: memoryview, size: int, part: Path, final: Path) -> None:
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        left = size
        while left:
            count = sock.recv_into(buffer[: min(left, len(buffer))])
            if count == 0:
                raise ConnectionError(f"sender hung up with {left} bytes of a file unsent")
            written = 0
            while written < count:
                written += os.write(fd, buffer[written:count])
            left -= count
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(part, final)


def send(address: str, source: Path, report: Path) -> int:
    """Send every .npy under `source` in name order; record each file's send-to-ack time."""
    files = sorted(source.rglob("*.npy"))
    host, _, port = address.rpartition(":")
    print(f"sending {len(files)} files", file=sys.stderr, flush=True)
    seconds: list[float] = []
    total = 0
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for path in files:
            started = time.perf_counter()
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                sock.sendall(LENGTH.pack(size))
                if sock.sendfile(handle, 0, size) != size:
                    raise RuntimeError(f"{path} shrank while being sent")
            if sock.recv(1) != ACK:
                raise ConnectionError("the receiver hung up instead of acknowledging a file")
            seconds.append(time.perf_counter() - started)
            total += size
    report.write_text(json.dumps({"files": len(files), "bytes": total, "seconds": seconds}))
    print(f"sent {len(files)} files", file=sys.stderr, flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pump", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    receiver = commands.add_parser("receive", help="accept one sender, store its files")
    receiver.add_argument("--dir", type=Path, required=True, help="gets partial/ and incoming/")
    sender = commands.add_parser("send", help="send a directory's .npy files")
    sender.add_argument("--to", required=True, metavar="HOST:PORT")
    sender.add_argument("--source", type=Path, required=True, metavar="DIR")
    sender.add_argument("--report", type=Path, required=True, metavar="FILE")
    args = parser.parse_args()
    if args.command == "receive":
        return receive(args.dir)
    return send(args.to, args.source, args.report)


if __name__ == "__main__":
    sys.exit(main())
