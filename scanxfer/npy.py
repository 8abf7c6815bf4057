"""Is a .npy file finished?  Its size must be exactly what its own header promises.

This catches writers that pause for longer than the settle time, which quiet alone cannot.
Parsing is bounded and never unpickles, because the files come from an instrument we do
not control and may be truncated or garbage.
"""

from __future__ import annotations

import ast
import functools
import logging
import math
import os
import re
import stat
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

from scanxfer.errors import ExitCode, ScanxferError

NPY_MAGIC = b"\x93NUMPY"
# numpy refuses to parse headers longer than this (its _MAX_HEADER_SIZE); so do we, so that a
# length field read from a garbage file can never size an allocation.
MAX_NPY_HEADER = 10_000
# No file is longer than the largest file offset (off_t). A garbage shape may multiply out to
# thousands of digits, which a caller could not even print (int to str stops at 4300 digits).
MAX_FILE_SIZE = 2**63 - 1
# Header-length field per format major version: 1.0 has 2 bytes, 2.0 and 3.0 have 4 bytes.
_HEADER_LEN_FORMAT = {1: "<H", 2: "<I", 3: "<I"}
# Version 3.0 only differs from 2.0 in allowing UTF-8 field names in the header.
_HEADER_ENCODING = {1: "latin1", 2: "latin1", 3: "utf8"}
# Plain numeric dtypes, which is what instruments write: the item size is in the descr itself.
# At most 4 digits: int() refuses more than 4300, and a garbage header may hold thousands.
_SIMPLE_DESCR = re.compile(r"[<>|=]?([biufc])([0-9]{1,4})")
_SIMPLE_SIZES = {
    "b": {1},
    "i": {1, 2, 4, 8},
    "u": {1, 2, 4, 8},
    "f": {2, 4, 8, 16},
    "c": {8, 16, 32},
}
# Bytes (S), raw records (V) and text (U, 4 bytes a character): the descr counts the items.
_SIZED_DESCR = re.compile(r"[<>|=]?([SUV])([1-9][0-9]{0,3})")
_CHARACTER_BYTES = {"S": 1, "V": 1, "U": 4}
# Datetimes and timedeltas are 8 bytes whatever their unit ('<M8[ns]', '<m8[25s]', '<M8').
_TIME_DESCR = re.compile(r"[<>|=]?[Mm]8(\[([1-9][0-9]{0,3})?(Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?")
# Python objects, which a .npy file can only hold as a pickle: refused, never sized.
_OBJECT_DESCR = re.compile(r"[<>|=]?O[48]?")
# A structured dtype nested deeper than this is garbage (numpy writes what a program defined);
# the bound keeps a hostile header from exhausting the recursion.
_MAX_FIELD_DEPTH = 16

log = logging.getLogger(__name__)


class NumpyMissing(ScanxferError):
    """A command that works on arrays (verify, simulate) was run where numpy is not installed.

    The Debian package only recommends python3-numpy: the receiver service does not need it.
    """

    # Like a wrong setting: running the same command again cannot help until numpy is there.
    exit_code = ExitCode.USAGE

    def __init__(self, command: str) -> None:
        super().__init__(
            f"'scanxfer {command}' needs python3-numpy: sudo apt install python3-numpy"
        )


def npy_expected_size(fp: BinaryIO) -> int | None:
    """Return the total size a complete .npy file must have, or None if the header is unusable.

    Reads at most MAX_NPY_HEADER + 12 bytes from the start of ``fp``. None means "cannot be
    proven complete": truncated or garbage header, unknown version, or an object dtype (such
    files are pickles, which we refuse to handle and cannot size-check).
    """
    prefix = fp.read(8)
    if len(prefix) < 8 or prefix[:6] != NPY_MAGIC:
        return None
    major, minor = prefix[6], prefix[7]
    if minor != 0 or major not in _HEADER_LEN_FORMAT:
        return None
    len_format = _HEADER_LEN_FORMAT[major]
    len_field = fp.read(struct.calcsize(len_format))
    if len(len_field) != struct.calcsize(len_format):
        return None
    (header_len,) = struct.unpack(len_format, len_field)
    if header_len > MAX_NPY_HEADER:
        return None
    header = fp.read(header_len)
    if len(header) != header_len:
        return None
    data_size = _npy_data_size(header, _HEADER_ENCODING[major])
    if data_size is None or data_size > MAX_FILE_SIZE:
        return None
    return len(prefix) + len(len_field) + header_len + data_size


def _npy_data_size(header: bytes, encoding: str) -> int | None:
    """Byte count of the array data described by a header dict literal, or None if invalid."""
    try:
        # Garbage (a damaged file, a stranger at the prototype door) may make the parser warn
        # about odd escapes; the warning would land in the journal, the verdict is enough.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fields = ast.literal_eval(header.decode(encoding))
    except (UnicodeDecodeError, ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        return None
    shape = fields["shape"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        return None
    if not isinstance(fields["fortran_order"], bool):
        return None
    itemsize = _itemsize(fields["descr"])
    return None if itemsize is None else math.prod(shape) * itemsize


def _itemsize(descr: object) -> int | None:
    """Bytes per element, or None for an invalid or object dtype.

    The dtypes numpy writes for numbers, text, bytes, times and records of them are sized here,
    so neither the sender's watcher nor the receiver's prototype door needs numpy (about
    20 MiB of memory, and a dependency the receiver's Debian package does not pull in).
    Anything else is left to numpy's own parser; without numpy such a file cannot be checked
    and counts as not a usable .npy file, with a warning that says what to install.
    """
    try:
        return _own_itemsize(descr, depth=0)
    except _NeedsNumpy:
        return _numpy_itemsize(descr)


class _NeedsNumpy(Exception):
    """A descr that _own_itemsize does not parse itself; numpy may still know it."""


def _own_itemsize(descr: object, depth: int) -> int | None:
    if isinstance(descr, list):
        return _record_itemsize(descr, depth)
    if not isinstance(descr, str):
        # A subarray tuple is numpy's to judge; a number, dict or None is no dtype at all.
        if isinstance(descr, tuple):
            raise _NeedsNumpy
        return None
    simple = _SIMPLE_DESCR.fullmatch(descr)
    if simple and int(simple.group(2)) in _SIMPLE_SIZES[simple.group(1)]:
        return int(simple.group(2))
    sized = _SIZED_DESCR.fullmatch(descr)
    if sized:
        return int(sized.group(2)) * _CHARACTER_BYTES[sized.group(1)]
    if _TIME_DESCR.fullmatch(descr):
        return 8
    if _OBJECT_DESCR.fullmatch(descr):
        return None
    raise _NeedsNumpy


def _record_itemsize(fields: list[object], depth: int) -> int | None:
    """A structured dtype: the sum of its fields, each (name, descr) or (name, descr, shape).

    Unnamed raw fields are padding, which numpy writes as ('', '|V4') and counts in the size.
    Titles, unnamed fields of other types and odd shapes are rare enough to leave to numpy.
    """
    if depth >= _MAX_FIELD_DEPTH:
        return None
    total = 0
    names: set[str] = set()
    for field in fields:
        if not isinstance(field, tuple) or len(field) not in (2, 3):
            raise _NeedsNumpy
        name, descr = field[0], field[1]
        if not isinstance(name, str) or (name == "" and not _is_padding(descr)):
            raise _NeedsNumpy
        if name in names:
            return None  # two fields of one name: numpy refuses the dtype
        if name:
            names.add(name)
        size = _own_itemsize(descr, depth + 1)
        count = _subarray_count(field[2]) if len(field) == 3 else 1
        if size is None or count is None:
            return None
        total += size * count
    return total


def _is_padding(descr: object) -> bool:
    return isinstance(descr, str) and descr.lstrip("<>|=").startswith("V")


def _subarray_count(shape: object) -> int | None:
    """Elements in a field's subarray: its shape is a whole number or a tuple of them."""
    if type(shape) is int and shape >= 0:
        return shape
    if isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape):
        return math.prod(shape)
    raise _NeedsNumpy


def _numpy_itemsize(descr: object) -> int | None:
    try:
        from numpy.lib import format as npy_format
    except ImportError:
        _warn_numpy_missing(repr(descr)[:200])
        return None
    try:
        dtype = npy_format.descr_to_dtype(descr)  # type: ignore[arg-type]  # any garbage
    except Exception:
        # numpy's parser lets out whatever its internals hit on garbage (a SyntaxError from
        # its own literal_eval, for one); to us every failure means "not a usable dtype".
        return None
    return None if dtype.hasobject else dtype.itemsize


@functools.lru_cache(maxsize=64)
def _warn_numpy_missing(descr: str) -> None:
    """Once per dtype: the watcher asks again about a file it has judged, the door does not."""
    log.warning(
        "cannot check .npy files of dtype %s without numpy, so they are treated as "
        "incomplete: install python3-numpy (sudo apt install python3-numpy)",
        descr,
    )


def npy_complete(path: Path) -> bool:
    """True unless ``path`` is a .npy file lacking (or exceeding) the bytes its header promises.

    Opened non-blocking so that a FIFO that happens to be named ``*.npy`` cannot hang the caller.
    """
    if path.suffix.lower() != ".npy":
        return True
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return False
    with os.fdopen(fd, "rb") as fp:
        expected = npy_expected_size(fp)
    return expected is not None and expected == st.st_size
