"""A pairing line that reaches the Pi: the receiver in a container with a network of its own.

The container has an address of its own on a veth link to the host, as a Pi has on its
LAN (not the host's loopback that the other system tests share), and no name a sender could
look up. `sudo scanxfer keys add lab-pc` without --address must put that address, and the
port the service listens on, into the line; `scanxfer pair` on the host then checks it with a
handshake across the link, and `scanxfer send --once` delivers through it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scanxfer.keys.pairing import parse_pairing

from .container import booted, fetch_packages, require_host_tools, veth_link
from .installed import assert_identical, install, make_scans, scanxfer_on_host, send_once

pytestmark = pytest.mark.system

PORT = 6000


def test_the_line_keys_add_prints_carries_the_receivers_own_address(
    deb: Path, tmp_path: Path
) -> None:
    require_host_tools("ip")
    link = veth_link()
    # The container's own network reaches the host only: apt fetches beforehand.
    packages = fetch_packages("amd64", tmp_path / "fetch", [deb])
    with booted("amd64", tmp_path / "veth", veth=link, packages=packages) as container:
        receiver = install(container, deb, PORT, host="0.0.0.0")
        receiver.wait_active()
        issued = container.sh("scanxfer keys add lab-pc")
        line = issued.stdout.strip()
        paired = parse_pairing(line)
        assert (paired.host, paired.port) == (link.container_address, PORT), issued.stderr
        running = f"of the running receiver (pid {receiver.show('MainPID')})"
        assert (
            f"address in the line: {link.container_address}:{PORT} (host: this host's primary "
            f"address (interfaces and routes); port: the listen port {running})\n"
        ) in issued.stderr
        # host0's other address is link-local, which a sender cannot dial without naming
        # its own interface: nothing else to offer.
        assert "other addresses" not in issued.stderr

        config = tmp_path / "lab-pc.yaml"
        config.write_text(f"state_dir: {tmp_path / 'lab-pc-state'}\n")
        result = scanxfer_on_host("pair", line, "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert "checked: the receiver let this sender in with this key.\n" in result.stderr
        scans = tmp_path / "scans"
        scans.mkdir()
        relatives = make_scans(scans, "veth")
        sent = send_once(config, scans)
        assert sent.returncode == 0, sent.stderr
        assert_identical(scans, receiver.incoming(), relatives)
        # The sender came across the link, from the host's end of it.
        assert f"{link.host_address}:" in receiver.journal()
        assert "sender 'lab-pc' connected" in receiver.journal()
