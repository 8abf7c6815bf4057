"""The package as built by `make deb`: lintian, and where its files land."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT
from .container import require_host_tools

pytestmark = pytest.mark.system

# "E: package: tag [context]" or "W: package source: tag ..."
_TAG = re.compile(r"^([EW]): \S+(?: \w+)?: (\S+)", re.MULTILINE)


def test_lintian_reports_no_errors_and_only_documented_warnings(deb: Path) -> None:
    require_host_tools("lintian")
    (changes,) = (ROOT / "build" / "deb").glob("*.changes")
    result = subprocess.run(
        ["lintian", "--pedantic", "--info", str(changes)],
        capture_output=True,
        text=True,
        check=False,
    )
    tags = _TAG.findall(result.stdout)
    assert not [tag for level, tag in tags if level == "E"], result.stdout
    documented = set(re.findall(r"`([a-z0-9-]+)`", (ROOT / "debian/README.source").read_text()))
    undocumented = {tag for level, tag in tags if level == "W"} - documented
    assert not undocumented, f"fix these or list them in debian/README.source:\n{result.stdout}"


def test_the_deb_carries_units_conffile_sysusers_and_man_page(deb: Path) -> None:
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    for path in (
        "./lib/systemd/system/scanxfer-receiver.service",
        "./usr/lib/systemd/user/scanxfer-sender.service",
        "./usr/lib/sysusers.d/scanxfer-receiver.conf",
        "./etc/scanxfer/receiver.yaml",
        "./usr/bin/scanxfer",
        "./usr/share/man/man1/scanxfer.1.gz",
    ):
        assert f" {path}\n" in listing, path
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True, check=True
    ).stdout
    assert conffiles.split() == ["/etc/scanxfer/receiver.yaml"]
    packaged_defaults = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    assert (ROOT / "config/receiver.yaml").read_bytes() in packaged_defaults


def test_hardening_keys_are_sorted() -> None:
    for unit in (ROOT / "systemd").glob("*.service"):
        section = unit.read_text().split("# Hardening, sorted", 1)[1].split("\n\n", 1)[0]
        lines = [line for line in section.splitlines()[1:] if not line.startswith("#")]
        keys = [line.split("=", 1)[0] for line in lines]
        assert keys and keys == sorted(keys), unit.name
