"""Which offered paths are acceptable, and which clash names a differing file is kept beside.

A clash name is ``stem~N.suffix`` (N = 1, 2, ...; only the last suffix counts): ``scan.npy`` ->
``scan~1.npy``, ``a.tar.gz`` -> ``a.tar~1.gz``, ``README`` -> ``README~1``.
"""

from __future__ import annotations

import os
import re
from contextlib import suppress
from dataclasses import dataclass
from pathlib import PurePosixPath

from .errors import BadName

NAME_MAX = 255
# The partial folder when none is set: inside the incoming folder, so on its filesystem and
# inside any sandbox exception made for it (see setup).  No offered path may use the name.
PARTIAL_FOLDER = ".scanxfer-partial"
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class StoreLimits:
    max_path_length: int  # UTF-8 bytes of the whole relative path
    max_path_depth: int  # number of components


def check_name(relpath: str, limits: StoreLimits) -> tuple[str, ...]:
    """Validate an offered relative path and return its components, or raise BadName."""
    problem = _name_problem(relpath, limits)
    if problem:
        raise BadName(f"refused the path {relpath!r}: {problem}; rename it on the sender")
    return tuple(relpath.split("/"))


def _name_problem(relpath: str, limits: StoreLimits) -> str | None:
    if not isinstance(relpath, str) or not relpath:
        return "it is empty"
    try:
        nbytes = len(relpath.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    bad = _CONTROL_CHARS.search(relpath)
    if bad:
        return f"it contains the control character U+{ord(bad.group()):04X}"
    if "\\" in relpath:
        return "it contains a backslash (paths must be '/'-separated)"
    if relpath.startswith("/"):
        return "it is absolute (paths must be relative)"
    if nbytes > limits.max_path_length:
        return f"it is {nbytes} UTF-8 bytes long, more than {limits.max_path_length}"
    parts = relpath.split("/")
    if len(parts) > limits.max_path_depth:
        return f"it has {len(parts)} components, more than {limits.max_path_depth}"
    if "" in parts:
        return "it has an empty component ('//' or a trailing '/')"
    if "." in parts or ".." in parts:
        return "it has a '.' or '..' component"
    if PARTIAL_FOLDER in parts:
        return f"the name {PARTIAL_FOLDER} is kept for the receiver's unfinished files"
    if any(len(part.encode("utf-8")) > NAME_MAX for part in parts):
        return f"a component is longer than {NAME_MAX} UTF-8 bytes"
    return None


def clash_name(name: str, n: int) -> str:
    pure = PurePosixPath(name)
    return f"{pure.stem}~{n}{pure.suffix}"


def clash_entries(dir_fd: int, name: str) -> dict[str, os.stat_result]:
    """lstat of ``name`` then its clash names by N; empty if ``name`` is free."""
    try:
        entries = {name: os.stat(name, dir_fd=dir_fd, follow_symlinks=False)}
    except FileNotFoundError:
        return {}
    pure = PurePosixPath(name)
    pattern = re.compile(re.escape(pure.stem) + "~([1-9][0-9]*)" + re.escape(pure.suffix))
    found = []
    with os.scandir(dir_fd) as it:
        for entry in it:
            match = pattern.fullmatch(entry.name)
            if match:
                with suppress(FileNotFoundError):
                    found.append((int(match[1]), entry.name, entry.stat(follow_symlinks=False)))
    entries.update((clash, st) for _, clash, st in sorted(found, key=lambda f: f[0]))
    return entries


def free_name(parts: tuple[str, ...], entries: dict[str, os.stat_result]) -> str:
    """The final name itself if free, else the first clash name not in ``entries``."""
    if not entries:
        return parts[-1]
    free = (clash_name(parts[-1], n) for n in range(1, len(entries) + 1))
    name = next(clash for clash in free if clash not in entries)
    if len(name.encode("utf-8")) > NAME_MAX:
        raise BadName(
            f"{'/'.join(parts)!r} exists with other content and its name is too long to keep "
            "the new file beside it; rename the file on the sender"
        )
    return name
