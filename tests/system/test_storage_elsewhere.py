"""Storing outside /var/lib/scanxfer, on a real Debian bookworm with systemd (amd64).

An admin first tries it by hand, with the folder left root's, and follows each message the
service gives until it starts; then a second filesystem (a tmpfs standing in for a USB disk) is
mounted and the README's one command is run verbatim, and a sender on the host delivers into
it.  One container for the module, the tests in that order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .container import booted, free_port, require_host_tools
from .installed import (
    UNIT,
    Receiver,
    assert_identical,
    install,
    make_scans,
    send_once,
    set_conffile_key,
)

pytestmark = pytest.mark.system

README = Path(__file__).resolve().parents[2] / "README.md"
DROP_INS = f"/etc/systemd/system/{UNIT}.service.d"


@pytest.fixture(scope="module")
def receiver(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    require_host_tools()
    with booted("amd64", tmp_path_factory.mktemp("storage")) as container:
        yield install(container, deb, free_port())


def refused_start(receiver: Receiver, message: str) -> None:
    """A restart fails: the service exits 4 and says `message` in the journal, once."""
    since = receiver.container.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    # Several starts in a few seconds would hit systemd's start rate limit, which no admin
    # typing these steps would: forget the earlier failures.
    receiver.container.sh(f"systemctl reset-failed {UNIT}", check=False)
    restart = receiver.container.sh(f"systemctl restart {UNIT}", check=False)
    assert restart.returncode != 0
    assert receiver.show("ExecMainStatus") == "4"
    assert receiver.journal(f"--since '{since}'").count(message) == 1, receiver.journal()


def test_a_root_owned_folder_is_refused_with_the_fix_until_it_is_right(
    receiver: Receiver,
) -> None:
    container = receiver.container
    container.sh("mkdir -p /srv/scans")
    set_conffile_key(container, "incoming_dir", "/srv/scans")
    refused_start(
        receiver,
        "cannot store files: /srv/scans is read-only to the service, whose sandbox allows "
        "writing only in its state folder and in ReadWritePaths=; allow it: sudo systemctl "
        "edit scanxfer-receiver, add [Service] ReadWritePaths=/srv/scans",
    )
    # What `systemctl edit` would write, without its editor.
    container.sh(
        f"mkdir -p {DROP_INS} && printf '[Service]\\nReadWritePaths=/srv/scans\\n' "
        f"> {DROP_INS}/override.conf && systemctl daemon-reload"
    )
    root_owned = (
        "cannot store files: user scanxfer may not write in /srv/scans (owner root, mode "
        "0755); give it the folder: sudo chown scanxfer: /srv/scans"
    )
    refused_start(receiver, root_owned)
    # The admin's own check (as root) checks as the service's user and says the same.
    check = container.sh("scanxfer receive --check", check=False)
    assert (check.returncode, check.stderr.strip()) == (4, f"scanxfer: error: {root_owned}")
    container.sh("chown scanxfer: /srv/scans")
    container.sh(f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}")
    receiver.wait_active()
    assert container.path("/srv/scans/.scanxfer-partial").is_dir()
    container.sh(f"rm {DROP_INS}/override.conf && systemctl daemon-reload")


def readme_store_in_command() -> str:
    """The README's one command for another disk, as printed there."""
    commands = re.findall(r"^sudo scanxfer store-in .+$", README.read_text(), re.MULTILINE)
    assert len(commands) == 1, commands
    return commands[0]


def test_the_readme_command_stores_on_another_disk(receiver: Receiver, tmp_path: Path) -> None:
    container = receiver.container
    command = readme_store_in_command()
    folder = command.split()[-1]
    disk = str(Path(folder).parent)
    # Above the default min_free_space (256 MiB); tmpfs takes memory only for what is stored.
    container.sh(f"mkdir -p {disk} && mount -t tmpfs -o size=512m usb-disk {disk}")
    # Verbatim but for sudo, which a minimal Debian lacks: the tests are root already.
    done = container.sh(command.removeprefix("sudo "))
    assert "restarted scanxfer-receiver: it runs with the new folder." in done.stderr
    receiver.wait_active()
    assert receiver.journal("-n 5").count(f"storing into {folder}") == 1
    assert container.sh(f"stat -c %U {folder}").stdout.strip() == "scanxfer"
    devices = container.sh(f"stat -c %d {folder} /var/lib/scanxfer").stdout.split()
    assert devices[0] != devices[1]  # really another filesystem
    scans = tmp_path / "scans"
    relatives = make_scans(scans, "usb")
    sender = receiver.pair_host_sender("usb-pc", tmp_path)
    sent = send_once(sender, scans)
    assert sent.returncode == 0, sent.stderr
    assert_identical(scans, container.path(folder), relatives)
    assert list(container.path(f"{folder}/.scanxfer-partial").iterdir()) == []
