"""Write synthetic .npy scans the way an instrument does, to exercise a sender end to end.

Each file appears under its final name and grows in pieces with short pauses, so the sender's
completion detection sees the same half-written files it will see in the lab. Data is generated
piece by piece, so even very large scans need little memory.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import BinaryIO

from scanxfer.npy import NumpyMissing

# The Debian package only recommends numpy (the receiver does not need it): without it this
# command says what to install instead of failing with a traceback.
try:
    import numpy as np
    from numpy.lib import format as npy_format
except ImportError as missing:
    raise NumpyMissing("simulate") from missing

log = logging.getLogger("scanxfer.simulate")

_NAME = re.compile(r"scan_(\d+)\.npy")
_MAX_PAUSE = 0.05  # seconds between pieces of one file
_BLOCK_BYTES = 16 << 20  # generate at most this much random data at a time
_SUPPORTED_KINDS = "biufc"  # boolean, signed/unsigned integer, float, complex


def run(
    directory: Path,
    count: int,
    interval: float,
    shape: tuple[int, ...],
    dtype: str,
    chunks: int = 4,
) -> list[Path]:
    """Write ``count`` scans into ``directory``, numbered after the highest existing scan.

    Sleeps ``interval`` seconds between files (not after the last) and returns the paths.
    """
    dt = _check(count, interval, shape, dtype, chunks)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng()
    first = _next_number(directory)
    pause = min(_MAX_PAUSE, interval / (2 * chunks))
    written: list[Path] = []
    for i in range(count):
        if i:
            time.sleep(interval)
        path = directory / f"scan_{first + i:06d}.npy"
        _write_progressively(path, shape, dt, chunks, pause, rng)
        log.info("wrote %s (%d bytes)", path.name, path.stat().st_size)
        written.append(path)
    return written


def _check(
    count: int, interval: float, shape: tuple[int, ...], dtype: str, chunks: int
) -> np.dtype:
    """Validate the arguments up front, so a bad request fails before any file is created."""
    if count < 0 or chunks < 1 or interval < 0:
        raise ValueError("count and interval must be >= 0 and chunks >= 1")
    if any(type(n) is not int or n < 1 for n in shape):
        raise ValueError(
            f"shape {shape} has a dimension below 1; every dimension must be a positive integer "
            "(an empty scan tests nothing)"
        )
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(
            f"unknown dtype {dtype!r}; use a numpy dtype name such as float32, uint16 or >f8"
        ) from exc
    if dt.kind not in _SUPPORTED_KINDS or dt.itemsize == 0:
        raise ValueError(
            f"dtype {dtype!r} is not supported: use a boolean, integer, float or complex dtype "
            "(object dtypes would make the .npy file a pickle)"
        )
    return dt


def _next_number(directory: Path) -> int:
    numbers = [int(m.group(1)) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name))]
    return max(numbers, default=0) + 1


def _write_progressively(
    path: Path,
    shape: tuple[int, ...],
    dt: np.dtype,
    chunks: int,
    pause: float,
    rng: np.random.Generator,
) -> None:
    """Header first, then the data in ``chunks`` flushed pieces with ``pause`` between them."""
    total = math.prod(shape)
    header = {"descr": npy_format.dtype_to_descr(dt), "fortran_order": False, "shape": shape}
    bounds = [total * k // chunks for k in range(chunks + 1)]
    # "xb": never overwrite a scan, even if another writer raced us to this number.
    with open(path, "xb") as fp:
        npy_format.write_array_header_1_0(fp, header)
        fp.flush()
        for k in range(chunks):
            _write_values(fp, bounds[k + 1] - bounds[k], dt, rng)
            fp.flush()
            if k < chunks - 1 and pause > 0:
                time.sleep(pause)


def _write_values(fp: BinaryIO, n: int, dt: np.dtype, rng: np.random.Generator) -> None:
    per_block = max(1, _BLOCK_BYTES // dt.itemsize)
    for start in range(0, n, per_block):
        fp.write(_random_values(rng, dt, min(per_block, n - start)).tobytes())


def _random_values(rng: np.random.Generator, dt: np.dtype, n: int) -> np.ndarray:
    """``n`` random values of ``dt``; never NaN, so copies always compare equal."""
    native = dt.newbyteorder("=")
    values: np.ndarray
    if dt.kind == "b":
        values = rng.integers(0, 2, n, dtype=np.uint8)
    elif dt.kind in "iu":
        info = np.iinfo(native)
        values = rng.integers(info.min, info.max, n, dtype=native, endpoint=True)
    elif dt.kind == "f":
        values = rng.standard_normal(n)
    else:
        values = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    return values.astype(dt)
