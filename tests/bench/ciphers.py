"""The receiver's CPU per GB for each way of carrying the bytes: plain TCP (with its frame
tags), TLS with AES-256-GCM, TLS with ChaCha20-Poly1305.

    python -m tests.bench.ciphers [--reps N]

CPU seconds, not wall time: they are what a Pi would run short of, and they change little
when the machine is busy with other work.  B1's 1 GiB scan, the modes rotated each round so
none always goes first.  Not yet part of `make bench`'s table.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from .contenders import run_scanxfer
from .run import BULK, generate

# (label, tls, tls_cipher)
MODES = (("plain", False, "auto"), ("TLS aes", True, "aes"), ("TLS chacha20", True, "chacha20"))


def measure(reps: int, work: Path) -> dict[str, list[float]]:
    """Receiver CPU seconds per GB of each mode, `reps` times."""
    source = work / "data"
    generate(source, BULK[0])
    size = sum(path.stat().st_size for path in source.rglob("*.npy"))
    results: dict[str, list[float]] = {label: [] for label, _, _ in MODES}
    for rep in range(reps):
        for label, tls, cipher in MODES[rep % 3 :] + MODES[: rep % 3]:
            target = work / f"{label.replace(' ', '-')}-{rep}"
            target.mkdir()
            run = run_scanxfer(source, target, 1, size, tls=tls, cipher=cipher)
            results[label].append(run.receiver_cpu_seconds / (size / 1e9))
            shutil.rmtree(target)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.ciphers")
    parser.add_argument("--reps", type=int, default=3, help="rounds of the three modes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scanxfer-ciphers-", dir="/var/tmp"))
    try:
        for label, values in measure(args.reps, work).items():
            print(f"{label:14} receiver CPU s/GB: " + ", ".join(f"{v:.2f}" for v in values))
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
