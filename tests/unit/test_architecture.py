"""The import rules of docs/architecture.md hold, and `make lint` would catch a break of them."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import scanxfer

REPO = Path(scanxfer.__file__).parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the scanxfer package found in `tree`, with `tree`'s contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "scanxfer", tmp_path / "scanxfer", symlinks=True)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_package_keeps_every_import_rule(tmp_path: Path) -> None:
    result = lint_imports(copy_of_the_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        (
            "sender/status.py",
            "from scanxfer import receiver",
            "Sender and receiver never import each other BROKEN",
        ),
        (
            "store/names.py",
            "from scanxfer.config import ReceiverConfig",
            "The store knows no settings and no protocol: it stores what it is told BROKEN",
        ),
        (
            "protocol/frames.py",
            "from scanxfer.errors import ScanxferError",
            "The protocol is sans-IO and self-contained: it imports nothing of the project BROKEN",
        ),
        ("errors.py", "import scanxfer.cli", "Layers:"),
    ],
)
def test_an_import_against_the_rules_fails_the_check(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    tree = copy_of_the_package(tmp_path)
    with (tree / "scanxfer" / module).open("a") as source:
        source.write(f"\n{line}  # noqa: E402, F401\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert broken in result.stdout
    assert "0 broken" not in result.stdout


def private_names_imported(path: Path) -> list[str]:
    """`from M import _name` in `path`: a name its own module keeps to itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found += [
                f"{path.relative_to(REPO)}:{node.lineno} imports {alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    return found


def test_no_module_imports_a_private_name_of_another() -> None:
    # ruff's SLF001 (in make lint) catches `module._name` and `obj._name`; this, the imports.
    modules = (REPO / "scanxfer").rglob("*.py")
    found = [line for path in modules for line in private_names_imported(path)]
    assert found == []
