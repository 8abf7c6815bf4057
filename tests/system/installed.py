"""The receiver package installed in a container the way a user does it, and host senders
paired with it the way a user pairs them."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy

from .container import Container, wait_for

CONFFILE = "/etc/scanxfer/receiver.yaml"
STATE = "/var/lib/scanxfer"
INCOMING = f"{STATE}/incoming"
UNIT = "scanxfer-receiver"
_POLICY = "/usr/sbin/policy-rc.d"


@dataclass
class Receiver:
    """The installed, running receiver service inside `container`, listening on `port`."""

    container: Container
    port: int
    install_output: str

    def show(self, prop: str) -> str:
        return self.container.sh(f"systemctl show --property={prop} --value {UNIT}").stdout.strip()

    def journal(self, options: str = "") -> str:
        return self.container.sh(f"journalctl -u {UNIT} --no-pager -o cat {options}").stdout

    def incoming(self) -> Path:
        return self.container.path(INCOMING)

    def wait_active(self, timeout: float = 120) -> None:
        wait_for(lambda: self._active_and_ready(), timeout, f"{UNIT} to be active")

    def _active_and_ready(self) -> bool:
        state = self.container.sh(f"systemctl is-active {UNIT}", check=False).stdout.strip()
        return state == "active"

    def issue_key(self, name: str) -> str:
        """`sudo scanxfer keys add NAME` on the Pi: the pairing line it prints on stdout.

        --address because the receiver listens on loopback here, which senders on the host
        reach as 127.0.0.1 (the container shares its network).
        """
        address = f"127.0.0.1:{self.port}"
        printed = self.container.sh(f"scanxfer keys add {name} --address {address}").stdout
        lines = printed.splitlines()
        assert len(lines) == 1 and lines[0].startswith("scanxfer://"), printed
        return lines[0]

    def pair_host_sender(self, name: str, workdir: Path) -> Path:
        """A sender on the host with a key of its own: its settings file, written by `pair`.

        The sender keeps its record of deliveries in `workdir`, away from the host user's.
        """
        config = workdir / f"{name}.yaml"
        config.write_text(f"state_dir: {json.dumps(str(workdir / f'{name}-state'))}\n")
        result = scanxfer_on_host("pair", self.issue_key(name), "-c", str(config))
        assert result.returncode == 0, result.stderr
        return config

    def pair_container_user(self, name: str, user: str) -> None:
        """`scanxfer pair LINE` as `user` inside the container, into their default settings."""
        self.container.sh(f"scanxfer pair {shlex.quote(self.issue_key(name))}", user=user)


def install(container: Container, deb: Path, port: int, host: str = "127.0.0.1") -> Receiver:
    """`apt install ./scanxfer-receiver.deb`, point it at `host` (loopback unless the container
    has a network of its own), `systemctl enable --now`.

    The package starts its service during the install, as Debian packages do. Here that would
    listen on every interface of the network the container shares with the host before the
    test points it at loopback, so policy-rc.d (Debian's switch for chroots and containers)
    holds that one start back; `systemctl enable --now` then starts it.
    """
    policy = container.path(_POLICY)
    policy.write_text("#!/bin/sh\n# held back by the scanxfer system test\nexit 101\n")
    policy.chmod(0o755)
    shutil.copyfile(deb, container.path("/root/scanxfer-receiver.deb"))
    try:
        output = container.sh("cd /root && apt install -y ./scanxfer-receiver.deb").stdout
    finally:
        policy.unlink()
    set_conffile_key(container, "listen", json.dumps(f"{host}:{port}"))
    container.sh(f"systemctl enable --now {UNIT}")
    return Receiver(container, port, output)


def set_conffile_key(container: Container, key: str, value: str) -> None:
    """Edit one top-level key of the receiver's conffile in place, as a user would."""
    path = container.path(CONFFILE)
    text, count = re.subn(rf"(?m)^{key}:.*$", f"{key}: {value}", path.read_text())
    assert count == 1, f"{CONFFILE} has no single line '{key}:'"
    path.write_text(text)


def make_scans(directory: Path, prefix: str) -> list[str]:
    """A small, varied set of .npy scans, one in a subfolder; their relative paths."""
    rng = numpy.random.default_rng(len(prefix))
    arrays = {
        f"{prefix}_0.npy": rng.integers(0, 65535, (256, 256), dtype=numpy.uint16),
        f"{prefix}_1.npy": rng.random((128, 64), dtype=numpy.float32),
        f"{prefix}_big.npy": rng.integers(0, 255, 3_000_000, dtype=numpy.uint8),
        f"run_{prefix}/{prefix}_deep.npy": numpy.arange(1000, dtype=numpy.int64),
    }
    for relative, array in arrays.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        numpy.save(directory / relative, array)
    return sorted(arrays)


def send_once(config: Path, scans: Path) -> subprocess.CompletedProcess[str]:
    """`scanxfer send --once` from the host as the paired sender `config`."""
    return scanxfer_on_host("send", "--once", "-c", str(config), "--watch", str(scans))


def scanxfer_on_host(*arguments: str) -> subprocess.CompletedProcess[str]:
    """`scanxfer ARGUMENTS` on the host, with the scanxfer under test."""
    return subprocess.run(
        [sys.executable, "-m", "scanxfer", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_identical(source: Path, dest: Path, relatives: list[str]) -> None:
    for relative in relatives:
        received = dest / relative
        assert received.is_file(), f"{relative} missing from {dest}"
        assert received.read_bytes() == (source / relative).read_bytes(), f"{relative} differs"
