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


# What the receiver imports at run time, each from the Debian archive (see debian/control).
RUNTIME_MODULES = ("python3-sdnotify", "python3-watchdog", "python3-xxhash", "python3-yaml")


def _relations(deb: Path) -> dict[str, set[str]]:
    """The package names in Depends and Recommends of the built .deb, versions and '|' set
    aside (asked for two fields, `dpkg-deb -f` prints each as 'Field: value')."""
    shown = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends", "Recommends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values: dict[str, str] = {}
    field = ""
    for line in shown.splitlines():
        if line.startswith((" ", "\t")):  # a folded field goes on
            values[field] += line
        else:
            field, _, value = line.partition(":")
            values[field] = value
    return {
        field: {
            re.split(r"[\s(:\[]", alternative.strip(), maxsplit=1)[0]
            for alternative in re.split(r"[,|]", value)
            if alternative.strip()
        }
        for field, value in values.items()
    }


def test_numpy_is_recommended_and_the_runtime_modules_are_depended_on(deb: Path) -> None:
    relations = _relations(deb)
    depends, recommends = relations["Depends"], relations.get("Recommends", set())
    # The service never imports numpy; only `verify` and `simulate` want it.
    assert "python3-numpy" in recommends, recommends
    assert not [name for name in depends if "numpy" in name], depends
    assert set(RUNTIME_MODULES) <= depends, depends


def test_the_prometheus_client_is_recommended_not_depended_on(deb: Path) -> None:
    relations = _relations(deb)
    depends, recommends = relations["Depends"], relations.get("Recommends", set())
    # Imported only when metrics_listen is set (see debian/control).
    assert "python3-prometheus-client" in recommends, recommends
    assert not [name for name in depends if "prometheus" in name], depends


def test_hardening_keys_are_sorted() -> None:
    for unit in (ROOT / "systemd").glob("*.service"):
        section = unit.read_text().split("# Hardening, sorted", 1)[1].split("\n\n", 1)[0]
        lines = [line for line in section.splitlines()[1:] if not line.startswith("#")]
        keys = [line.split("=", 1)[0] for line in lines]
        assert keys and keys == sorted(keys), unit.name
