"""Fuzz target: the .npy header check that judges files nobody vouches for.

`npy_expected_size` decides whether a file is complete: the sender's watcher asks it before
sending a scan, and the prototype door (scanxfer/receiver/prototype_door.py) asks it about
the first bytes of every unauthenticated upload before storing it.  For any bytes it must
answer a size or None and raise nothing, and it must read no more than the door hands it
(NPY_PREFIX bytes), or the door would refuse good files for want of bytes it never buffers.

    python -m tests.fuzz.fuzz_npy build/fuzz/npy -max_total_time=60
"""

from __future__ import annotations

import io
import struct

from .launch import atheris, run

with atheris.instrument_imports(include=["scanxfer"]):
    from scanxfer.npy import MAX_NPY_HEADER, NPY_MAGIC, npy_expected_size
    from scanxfer.receiver.prototype_door import NPY_PREFIX

MAX_LEN = NPY_PREFIX + 64


def test_one_input(data: bytes) -> None:
    source = io.BytesIO(data)
    size = npy_expected_size(source)
    assert size is None or (type(size) is int and size >= source.tell()), size
    assert source.tell() <= NPY_PREFIX, source.tell()


def _npy(header: str, major: int = 1) -> bytes:
    """The head of a .npy file of format `major`.0 with `header` as its dict."""
    raw = header.encode("latin1" if major < 3 else "utf8")
    length = struct.pack("<H" if major == 1 else "<I", len(raw))
    return NPY_MAGIC + bytes([major, 0]) + length + raw


def seeds() -> list[bytes]:
    """Headers as numpy writes them, in each format version and for several dtypes."""
    headers = [
        "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }",
        "{'descr': '|u1', 'fortran_order': True, 'shape': (), }",
        "{'descr': '<c16', 'fortran_order': False, 'shape': (0,), }",
        "{'descr': [('x', '<i4'), ('y', '>f2', (2,))], 'fortran_order': False, 'shape': (5,)}",
        "{'descr': '<U7', 'fortran_order': False, 'shape': (2,)}",
        "{'descr': '|O', 'fortran_order': False, 'shape': (1,)}",
    ]
    # Once crashes: numpy's parser raising SyntaxError, and int() refusing 4401 digits.
    headers += [
        "{'descr': '<,7', 'fortran_order': False, 'shape': (2,)}",
        "{'descr': '<i" + "0" * 4400 + "4', 'fortran_order': False, 'shape': (2,)}",
    ]
    found = [_npy(header, major) for header in headers for major in (1, 2, 3)]
    found.append(_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}" + " " * 9000))
    found.append(_npy(" " * (MAX_NPY_HEADER + 1)))
    return found


if __name__ == "__main__":
    run(test_one_input, seeds(), MAX_LEN)
