"""The README's steps for the sender, typed as written, on a fresh account.

From a copy of the source tree, with a HOME of its own: `pipx install .` and
`install-user-unit --watch ~/scans` (the first block), `scanxfer pair LINE` with the line a real
receiver printed (the second block), then "test it once with `scanxfer send --once`". The
`systemctl --user` steps need a user manager; tests/system runs the unit in a booted container.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import scanxfer

from .harness import ReceiverProcess, write_scan

REPO = Path(scanxfer.__file__).parents[1]
SECTION = "### The sender, on the instrument PC"
# What a fresh clone holds: leave out what builds and runs made in this one.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "demo", "data"
)


def readme_sender_blocks() -> list[str]:
    """The shell blocks of the README's sender install section, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n### ", len(SECTION))]
    return re.findall(r"```sh\n(.*?)```", section, re.DOTALL)


def readme_test_command() -> str:
    """The command the README says to test the sender with, once it is paired."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"Test it once with `([^`]+)`", text)
    assert found is not None, "the README no longer says how to test the sender once"
    return found.group(1)


def shell(command: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` in bash as a user on a fresh account: their HOME, a plain PATH."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env={"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_readme_install_steps_deliver_a_scan(tmp_path: Path) -> None:
    install, pair, _service = readme_sender_blocks()
    assert "pipx install ." in install and "scanxfer pair '" in pair
    source, home = tmp_path / "scanxfer", tmp_path / "home"
    shutil.copytree(REPO, source, ignore=NOT_IN_A_CLONE, symlinks=True)
    home.mkdir()
    receiver = ReceiverProcess(tmp_path / "pi").start()
    try:
        result = shell(install, home, source)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (home / "scans").is_dir()  # --watch made it: send --once finds it

        issued = shell(
            f"{home}/.local/bin/scanxfer keys add lab-pc --state-dir {receiver.state} "
            f"--address 127.0.0.1:{receiver.port}",
            home,
            tmp_path,
        )
        assert issued.returncode == 0, issued.stderr
        line = issued.stdout.strip()
        example = re.search(r"'(scanxfer://[^']*)'", pair)
        assert example is not None, pair
        result = shell(pair.replace(example.group(1), line), home, source)
        assert result.returncode == 0, result.stderr

        write_scan(home / "scans" / "first.npy", (64, 64), seed=1)
        result = shell(readme_test_command(), home, home)
        assert result.returncode == 0, result.stderr
        assert receiver.stored_files() == ["first.npy"]
        assert (receiver.incoming / "first.npy").read_bytes() == (
            home / "scans" / "first.npy"
        ).read_bytes()
    finally:
        receiver.stop()
