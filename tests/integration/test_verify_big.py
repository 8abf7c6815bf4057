"""`verify` on a file of 1 GiB keeps to a few MiB of memory.

Here rather than in tests/unit because it reads 4 GiB (two files, twice): the point is a real
size, far beyond the memory it may use, so it cannot be made small.
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest

from scanxfer.verify import compare_files, verify_trees


@pytest.mark.slow
def test_one_gib_file_with_little_memory(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for root in (src, dst):
        with open(root / "big.bin", "wb") as fp:
            fp.truncate(1 << 30)
    with open(dst / "big.bin", "r+b") as fp:
        fp.seek((1 << 30) - 1)
        fp.write(b"\1")
    tracemalloc.start()
    try:
        out = io.StringIO()
        code = verify_trees(src, dst, out)
        c = compare_files(src / "big.bin", dst / "big.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 1 and "DIFFERENT big.bin (contents differ)" in out.getvalue()
    assert not c.identical and c.a_size == 1 << 30
    assert peak < 32 << 20
