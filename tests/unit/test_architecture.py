"""The import rules of docs/architecture.md hold, and `make lint` would catch a break of them."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_a_sender_module_importing_the_receiver_breaks_the_rules(tmp_path: Path) -> None:
    tree = copy_of_the_package(tmp_path)
    with (tree / "scanxfer" / "sender" / "status.py").open("a") as module:
        module.write("\nfrom scanxfer import receiver  # noqa: E402, F401\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "Sender and receiver never import each other BROKEN" in result.stdout


def test_the_store_importing_settings_breaks_the_rules(tmp_path: Path) -> None:
    tree = copy_of_the_package(tmp_path)
    with (tree / "scanxfer" / "store" / "names.py").open("a") as module:
        module.write("\nfrom scanxfer.config import ReceiverConfig  # noqa: E402, F401\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "The store knows no settings and no protocol" in result.stdout


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
