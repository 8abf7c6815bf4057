"""Fail the package build when debian/changelog and scanxfer.__version__ name different versions.

apt shows the changelog's version and `scanxfer --version` prints __version__: a release
changes both, and a build that would ship two numbers for one package stops here instead.
debian/rules runs it before configuring (so dpkg-buildpackage run by hand is checked too) and
`make deb` runs it first, to fail in one line before installing build dependencies.

    python3 debian/check_version.py [SOURCE_TREE]     (default: the current directory)

Standard library only: it runs before any build dependency is installed.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

CHANGELOG = Path("debian/changelog")
VERSION_MODULE = Path("scanxfer/__init__.py")
# The first line of debian/changelog: "scanxfer (0.1.0) unstable; urgency=medium".
_CHANGELOG_HEAD = re.compile(r"\S+ \((?P<version>[^()\s]+)\)")


def changelog_version(tree: Path) -> str:
    """The version of the newest entry of debian/changelog, as dpkg-parsechangelog reads it."""
    lines = (tree / CHANGELOG).read_text(encoding="utf-8").splitlines()
    match = _CHANGELOG_HEAD.match(lines[0]) if lines else None
    if match is None:
        raise SystemExit(f"{CHANGELOG}: its first line names no version, like 'scanxfer (0.1.0)'")
    return match["version"]


def python_version(tree: Path) -> str:
    """The string assigned to __version__ in scanxfer/__init__.py, read without importing it."""
    module = ast.parse((tree / VERSION_MODULE).read_text(encoding="utf-8"))
    for node in module.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(target, "id", None) for target in node.targets] == ["__version__"]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise SystemExit(f'{VERSION_MODULE}: no line like __version__ = "0.1.0"')


def as_python_version(debian_version: str) -> str:
    """The PEP 440 spelling of a Debian version: no epoch, no Debian revision, no '~'.

    Debian writes a pre-release as 0.2.0~rc1 so that it sorts before 0.2.0; Python writes
    0.2.0rc1. The package is native, so there is normally neither epoch nor revision.
    """
    upstream = debian_version.split(":", 1)[-1].rsplit("-", 1)[0]
    return upstream.replace("~", "")


def mismatch(tree: Path) -> str | None:
    """The one-line complaint when the two versions differ, else None."""
    debian, python = changelog_version(tree), python_version(tree)
    if as_python_version(debian) == python:
        return None
    return (
        f"version mismatch: {CHANGELOG} says {debian} but {VERSION_MODULE} says "
        f'__version__ = "{python}"; make them equal: if {debian} is the release, set '
        f'__version__ = "{as_python_version(debian)}"; if {python} is, add its changelog '
        f"entry with dch -v {python}"
    )


def main(argv: list[str]) -> int:
    problem = mismatch(Path(argv[0]) if argv else Path())
    if problem is None:
        return 0
    print(problem, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
