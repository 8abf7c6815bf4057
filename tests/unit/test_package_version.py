"""One version: the Debian package's (debian/changelog) is scanxfer.__version__.

debian/check_version.py fails the build on a mismatch; `make deb` runs it first and
debian/rules runs it before configuring. These run it on copies of the tree with a bumped
changelog, so no .deb is built.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import scanxfer

REPO = Path(scanxfer.__file__).parents[1]
CHECK = ["python3", "debian/check_version.py"]
# What the package build needs of the tree; `make deb` lists these as its inputs.
TREE = ["Makefile", "pyproject.toml", "README.md", "scanxfer", "config", "systemd", "debian"]


def copy_of_the_tree(destination: Path, changelog_version: str | None = None) -> Path:
    """The source tree in `destination`, its newest changelog entry renamed `changelog_version`."""
    for name in TREE:
        source = REPO / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(source, destination / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    if changelog_version is not None:
        changelog = destination / "debian" / "changelog"
        head, rest = changelog.read_text().split("\n", 1)
        name = head.split(" ", 1)[0]
        changelog.write_text(f"{name} ({changelog_version}) {head.split(') ', 1)[1]}\n{rest}")
    return destination


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def mismatch_line(debian: str, python: str) -> str:
    return (
        f"version mismatch: debian/changelog says {debian} but scanxfer/__init__.py says "
        f'__version__ = "{python}"; make them equal: if {debian} is the release, set '
        f'__version__ = "{debian}"; if {python} is, add its changelog entry with '
        f"dch -v {python}"
    )


def test_the_tree_as_committed_passes() -> None:
    result = run(CHECK, REPO)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_scanxfer_version_is_the_package_version() -> None:
    package = run(["dpkg-parsechangelog", "-S", "Version"], REPO)
    command = run([sys.executable, "-m", "scanxfer", "--version"], REPO)
    assert package.returncode == 0, package.stderr
    assert command.stdout == f"scanxfer {package.stdout.strip()}\n"


def test_a_bumped_changelog_fails_the_check_in_one_line(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path, changelog_version="0.1.1")
    result = run(CHECK, tree)
    assert result.returncode == 1
    assert result.stderr == mismatch_line("0.1.1", scanxfer.__version__) + "\n"


def test_make_deb_stops_at_a_mismatch_before_building(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path, changelog_version="9.9.9")
    # Should the check let it through, no sudo and no dpkg-buildpackage may run from here.
    result = run(["make", "deb", "SUDO=false", "DEB_PATH=/nonexistent"], tree)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == mismatch_line("9.9.9", scanxfer.__version__)
    assert "dpkg" not in result.stdout + result.stderr
    assert not (tree / "build").exists()
    assert not (tree / "scanxfer-receiver.deb").exists()


def test_dpkg_buildpackage_by_hand_stops_at_a_mismatch(tmp_path: Path) -> None:
    """debian/rules checks before dh_auto_configure, whoever runs it."""
    tree = copy_of_the_tree(tmp_path, changelog_version="0.2.0")
    result = run(["make", "-f", "debian/rules", "override_dh_auto_configure"], tree)
    assert result.returncode != 0
    assert mismatch_line("0.2.0", scanxfer.__version__) in result.stderr.splitlines()
    assert "dh_auto_configure" not in result.stdout
    assert not (tree / ".pybuild").exists()


@pytest.mark.parametrize(
    ("debian", "python"),
    [("0.2.0~rc1", "0.2.0rc1"), ("1:0.1.0", "0.1.0"), ("0.1.0-2", "0.1.0")],
    ids=["pre-release", "epoch", "revision"],
)
def test_debian_spellings_of_the_same_version_pass(
    tmp_path: Path, debian: str, python: str
) -> None:
    tree = copy_of_the_tree(tmp_path, changelog_version=debian)
    module = tree / "scanxfer" / "__init__.py"
    module.write_text(module.read_text().replace(f'"{scanxfer.__version__}"', f'"{python}"'))
    result = run(CHECK, tree)
    assert (result.returncode, result.stderr) == (0, "")
