"""The user's story on a real Debian bookworm with systemd (amd64), in order.

One container is booted for the module; the tests run in the order a user meets these things:
install, the certificate the service makes, pairing senders and revoking one, receive, watch,
reload, survive a hang, the sender's user unit, upgrade, purge. Every sender is paired as a
user pairs one: `sudo scanxfer keys add NAME` on the Pi, `scanxfer pair LINE` on the sender.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest

from .container import Container, booted, free_port, require_host_tools, wait_for
from .installed import (
    CONFFILE,
    INCOMING,
    STATE,
    UNIT,
    Receiver,
    assert_identical,
    install,
    make_scans,
    send_once,
    set_conffile_key,
)

pytestmark = pytest.mark.system

MAX_EXPOSURE = 2.0
LAB_USER = "lab"


@pytest.fixture(scope="module")
def receiver(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    require_host_tools()
    with booted("amd64", tmp_path_factory.mktemp("amd64")) as container:
        yield install(container, deb, free_port())


@pytest.fixture(scope="module")
def sender(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The settings of the host's sender, paired once for the tests that only send."""
    return receiver.pair_host_sender("host-pc", tmp_path_factory.mktemp("sender"))


def test_apt_install_fetches_dependencies_and_the_service_runs_unprivileged(
    receiver: Receiver,
) -> None:
    container = receiver.container
    assert "Setting up python3-numpy" in receiver.install_output  # fetched from the archive
    assert container.sh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert container.sh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    main_pid = receiver.show("MainPID")
    assert container.sh(f"ps -o user= -p {main_pid}").stdout.strip() == "scanxfer"
    assert receiver.incoming().is_dir()
    assert container.path("/usr/share/man/man1/scanxfer.1.gz").is_file()


def test_hardening_exposure_is_at_most_two(receiver: Receiver) -> None:
    report = receiver.container.sh(f"systemd-analyze security --no-pager {UNIT}.service").stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert match, report
    assert float(match.group(1)) <= MAX_EXPOSURE, report


def test_the_service_makes_its_tls_certificate_on_first_start(receiver: Receiver) -> None:
    container = receiver.container
    # No `keys add` has run yet (it would make the certificate too), so the service made it:
    # its sandbox lets it run openssl and write under its state directory.
    assert not container.path(f"{STATE}/keys.json").exists()
    for path, mode in (("tls", "700"), ("tls/key.pem", "600"), ("tls/cert.pem", "644")):
        owner_and_mode = container.sh(f"stat -c '%U %a' {STATE}/{path}").stdout.split()
        assert owner_and_mode == ["scanxfer", mode], path
    subject = container.sh(f"openssl x509 -noout -subject -in {STATE}/tls/cert.pem").stdout
    assert "scanxfer receiver" in subject
    assert receiver.show("NRestarts") == "0"
    # Until a sender is paired, the service says how to pair one.
    assert "scanxfer keys add NAME" in receiver.journal("-p warning")


def test_a_key_added_with_sudo_is_accepted_without_a_restart(
    receiver: Receiver, tmp_path: Path
) -> None:
    pid_before, restarts_before = receiver.show("MainPID"), receiver.show("NRestarts")

    config = receiver.pair_host_sender("bench-pc", tmp_path)

    # Written by root, kept readable by the daemon and by nobody else.
    keys = receiver.container.sh(f"stat -c '%U %a' {STATE}/keys.json").stdout.split()
    assert keys == ["scanxfer", "600"]
    paired = config.read_text()
    assert f'receiver: "127.0.0.1:{receiver.port}"' in paired and "tls: true" in paired
    scans = make_scans(tmp_path / "scans", "added")
    result = send_once(config, tmp_path / "scans")
    assert result.returncode == 0, result.stderr
    assert_identical(tmp_path / "scans", receiver.incoming(), scans)
    assert (receiver.show("MainPID"), receiver.show("NRestarts")) == (pid_before, restarts_before)


def test_a_revoked_key_is_refused_without_a_restart_and_the_peer_logged(
    receiver: Receiver, sender: Path, tmp_path: Path
) -> None:
    container = receiver.container
    config = receiver.pair_host_sender("old-pc", tmp_path)
    scans = tmp_path / "scans"
    make_scans(scans, "before_revoke")
    assert send_once(config, scans).returncode == 0  # the key works until it is revoked
    pid_before, restarts_before = receiver.show("MainPID"), receiver.show("NRestarts")

    container.sh("scanxfer keys revoke old-pc")
    numpy.save(scans / "after_revoke.npy", numpy.arange(100))
    result = send_once(config, scans)

    assert result.returncode != 0
    assert "refused this sender's key" in result.stderr, result.stderr
    assert not (receiver.incoming() / "after_revoke.npy").exists()
    # The sender connects from loopback, which is where the receiver sees it come from.
    refusal = re.compile(r"127\.0\.0\.1(:\d+)?: handshake failed: .*'old-pc'.* revoked")
    wait_for(
        lambda: refusal.search(receiver.journal("-p warning")),
        30,
        "the failed handshake logged with the peer's address",
    )
    assert (receiver.show("MainPID"), receiver.show("NRestarts")) == (pid_before, restarts_before)
    listed = container.sh("scanxfer keys list").stdout
    assert re.search(r"(?m)^old-pc +\S+ +revoked ", listed), listed
    # Only that sender is refused: the others deliver as before.
    others = tmp_path / "others"
    delivered = make_scans(others, "not_revoked")
    assert send_once(sender, others).returncode == 0
    assert_identical(others, receiver.incoming(), delivered)


def test_sent_scans_arrive_identical_and_each_is_logged_at_info(
    receiver: Receiver, sender: Path, tmp_path: Path
) -> None:
    scans = make_scans(tmp_path, "first")
    result = send_once(sender, tmp_path)
    assert result.returncode == 0, result.stderr

    assert_identical(tmp_path, receiver.incoming(), scans)
    owner = receiver.container.sh(f"stat -c %U {INCOMING}/{scans[0]}").stdout.strip()
    assert owner == "scanxfer"
    for relative in scans:
        wait_for(
            lambda r=relative: f"received {r} " in receiver.journal(), 30, f"{relative} logged"
        )
    entries = [json.loads(line) for line in receiver.journal("-o json").splitlines()]
    received = [e for e in entries if "received " in str(e.get("MESSAGE", ""))]
    assert len(received) >= len(scans)
    # Priority from the "<6>" prefix, which journald strips; no second timestamp in the text.
    for entry in received:
        assert entry["PRIORITY"] == "6", entry
        assert not re.match(r"<\d>|\d{4}-\d\d-\d\d|\w{3} [ \d]\d \d\d:", entry["MESSAGE"])
    problems = receiver.journal("-p warning")
    assert not any(relative in problems for relative in scans), problems


def test_systemctl_status_shows_the_status_line(
    receiver: Receiver, sender: Path, tmp_path: Path
) -> None:
    scans = make_scans(tmp_path, "status")
    assert send_once(sender, tmp_path).returncode == 0

    def status() -> re.Match[str] | None:
        text = receiver.container.sh(f"systemctl status --no-pager {UNIT}", check=False).stdout
        return re.search(
            r'Status: "(\d+) files?, [\d.]+ \w+ received, last (\S+); \d+ connections?"', text
        )

    # The line is refreshed at each tick of the main loop (half the watchdog period).
    line = wait_for(
        lambda: (found := status()) and found.group(2) in scans and found,
        60,
        "a STATUS= line naming one of the files just sent",
    )
    assert int(line.group(1)) >= len(scans)


def test_the_metrics_endpoint_serves_the_host_and_the_unit_stays_hardened(
    receiver: Receiver, sender: Path, tmp_path: Path
) -> None:
    """metrics_listen on, in the sandboxed unit: the host scrapes it over the shared network."""
    container, port = receiver.container, free_port()
    set_conffile_key(container, "metrics_listen", f'"127.0.0.1:{port}"')
    try:
        container.sh(f"systemctl restart {UNIT}")
        receiver.wait_active()
        scans = make_scans(tmp_path, "metrics")
        assert send_once(sender, tmp_path).returncode == 0
        metrics = wait_for(lambda: _scraped(port, "/metrics"), 60, f"metrics on port {port}")
        files = re.search(r'received_files_total\{sender="host-pc"\} (\S+)', metrics)
        assert files and float(files.group(1)) == len(scans), metrics
        assert re.search(r"^scanxfer_receiver_free_bytes [1-9]", metrics, re.M), metrics
        page = _scraped(port, "/")
        assert page and "host-pc" in page and scans[-1] in page, page
        report = container.sh(f"systemd-analyze security --no-pager {UNIT}.service").stdout
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
        assert match and float(match.group(1)) <= MAX_EXPOSURE, report
    finally:
        set_conffile_key(container, "metrics_listen", "null")
        container.sh(f"systemctl restart {UNIT}")
        receiver.wait_active()


def _scraped(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_reload_applies_the_new_config_without_a_restart(
    receiver: Receiver, sender: Path, tmp_path: Path
) -> None:
    container = receiver.container
    pid_before, restarts_before = receiver.show("MainPID"), receiver.show("NRestarts")
    set_conffile_key(container, "max_file_size", "1KiB")
    try:
        container.sh(f"systemctl reload {UNIT}")
        assert container.sh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
        assert receiver.show("MainPID") == pid_before
        wait_for(lambda: "settings reloaded" in receiver.journal(), 30, "the reload logged")

        numpy.save(tmp_path / "too_big.npy", numpy.arange(1000, dtype=numpy.uint16))
        result = send_once(sender, tmp_path)
        assert result.returncode != 0  # refused under the new limit
        assert not (receiver.incoming() / "too_big.npy").exists()
        wait_for(
            lambda: "max_file_size 1024" in receiver.journal("-p warning"),
            30,
            "the refusal logged as a warning",
        )
    finally:
        set_conffile_key(container, "max_file_size", "64GiB")
        container.sh(f"systemctl reload {UNIT}")
    assert receiver.show("NRestarts") == restarts_before


def test_a_reload_with_broken_settings_fails_and_the_daemon_keeps_running(
    receiver: Receiver,
) -> None:
    container = receiver.container
    pid_before = receiver.show("MainPID")
    set_conffile_key(container, "max_file_size", "lots")
    try:
        reload = container.sh(f"systemctl reload {UNIT}", check=False)
        assert reload.returncode != 0  # the admin sees it failed, not a silent no-op
        assert container.sh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
        assert receiver.show("MainPID") == pid_before
        wait_for(
            lambda: "key 'max_file_size'" in receiver.journal(), 30, "the reason in the journal"
        )
    finally:
        set_conffile_key(container, "max_file_size", "64GiB")
    container.sh(f"systemctl reload {UNIT}")


def test_watchdog_restarts_a_hung_daemon(receiver: Receiver, sender: Path, tmp_path: Path) -> None:
    restarts = int(receiver.show("NRestarts"))
    hung_pid = receiver.show("MainPID")
    receiver.container.sh(f"kill -STOP {hung_pid}")

    wait_for(lambda: int(receiver.show("NRestarts")) > restarts, 120, "a watchdog restart")
    receiver.wait_active()
    assert receiver.show("MainPID") not in ("0", hung_pid)
    assert "Watchdog timeout" in receiver.container.sh(f"journalctl -u {UNIT} -o cat").stdout
    scans = make_scans(tmp_path, "after_watchdog")
    assert send_once(sender, tmp_path).returncode == 0
    assert_identical(tmp_path, receiver.incoming(), scans)


def test_a_lingering_users_sender_unit_delivers(receiver: Receiver) -> None:
    container = receiver.container
    container.sh(f"useradd --create-home {LAB_USER} && loginctl enable-linger {LAB_USER}")
    uid = container.sh(f"id -u {LAB_USER}").stdout.strip()
    wait_for(
        lambda: (
            container.sh(f"systemctl is-active user@{uid}.service", check=False).stdout
            == "active\n"
        ),
        120,
        "the lab user's systemd manager",
    )
    # Pairing writes ~/.config/scanxfer/sender.yaml from the defaults, which watch ~/scans.
    receiver.pair_container_user("lab-pi", LAB_USER)
    container.sh("mkdir scans", user=LAB_USER)
    settings = container.sh("stat -c '%U %a' .config/scanxfer/sender.yaml", user=LAB_USER)
    assert settings.stdout.split() == [LAB_USER, "600"]  # it holds the key
    try:
        container.sh("systemctl --user enable --now scanxfer-sender", user=LAB_USER)
        _user_scan_arrives(receiver, "by_packaged_unit.npy")

        # The same through `scanxfer install-user-unit`, which overrides the packaged unit.
        container.sh("scanxfer install-user-unit", user=LAB_USER)
        container.sh("systemctl --user restart scanxfer-sender", user=LAB_USER)
        fragment = container.sh(
            "systemctl --user show --property=FragmentPath --value scanxfer-sender",
            user=LAB_USER,
        ).stdout.strip()
        assert fragment == f"/home/{LAB_USER}/.config/systemd/user/scanxfer-sender.service"
        _user_scan_arrives(receiver, "by_installed_unit.npy")
    finally:
        container.sh("systemctl --user disable --now scanxfer-sender", user=LAB_USER, check=False)


def _user_scan_arrives(receiver: Receiver, name: str) -> None:
    container = receiver.container
    state = container.sh("systemctl --user is-active scanxfer-sender", user=LAB_USER, check=False)
    assert state.stdout.strip() == "active", _sender_journal(container)
    container.sh(
        f"python3 -c 'import numpy; numpy.save(\"scans/{name}\", numpy.arange(50000))'",
        user=LAB_USER,
    )
    source = container.path(f"/home/{LAB_USER}/scans/{name}")
    wait_for(
        lambda: (receiver.incoming() / name).is_file(), 60, f"{name} delivered by the user unit"
    )
    assert (receiver.incoming() / name).read_bytes() == source.read_bytes()
    wait_for(lambda: name in _sender_journal(container), 30, f"the sender logging {name}")


def _sender_journal(container: Container) -> str:
    return container.sh(
        "journalctl _SYSTEMD_USER_UNIT=scanxfer-sender.service --no-pager -o cat"
    ).stdout


def test_a_locally_edited_conffile_survives_installing_a_newer_version(
    receiver: Receiver, sender: Path, deb: Path, tmp_path: Path
) -> None:
    container = receiver.container
    conffile = container.path(CONFFILE)
    conffile.write_text(conffile.read_text() + "# edited on this Pi\n")
    edited = conffile.read_text()
    pid_before = receiver.show("MainPID")
    newer = _rebuilt_with_version(deb, "0.1.0+systemtest1", tmp_path)
    upgrade = container.path("/root/upgrade")
    upgrade.mkdir()
    shutil.copyfile(newer, upgrade / "scanxfer-receiver.deb")

    container.sh("cd /root/upgrade && apt install -y ./scanxfer-receiver.deb")

    version = container.sh("dpkg-query -W -f '${Version}' scanxfer-receiver").stdout
    assert version == "0.1.0+systemtest1"
    assert conffile.read_text() == edited
    assert not list(container.path("/etc/scanxfer").glob("*.dpkg-*"))
    receiver.wait_active()
    assert receiver.show("MainPID") != pid_before  # restarted into the new version
    assert "interrupted files stay resumable" in receiver.journal()  # stopped by SIGTERM
    # The keys and the certificate the sender pinned outlive the upgrade: no pairing again.
    scans = make_scans(tmp_path / "scans", "after_upgrade")
    assert send_once(sender, tmp_path / "scans").returncode == 0
    assert_identical(tmp_path / "scans", receiver.incoming(), scans)


def _rebuilt_with_version(deb: Path, version: str, workdir: Path) -> Path:
    """The same package under a higher version, as the next release would arrive."""
    tree = workdir / "tree"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    newer = workdir / "newer.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(newer)],
        check=True,
        capture_output=True,
    )
    return newer


def test_purge_removes_config_user_and_unit_but_keeps_received_files(
    receiver: Receiver,
) -> None:
    container = receiver.container
    container.sh("apt purge -y scanxfer-receiver")

    assert container.sh(f"systemctl is-active {UNIT}", check=False).stdout.strip() != "active"
    assert not container.path("/etc/scanxfer").exists()
    assert container.sh("getent passwd scanxfer", check=False).returncode == 2
    assert container.sh("getent group scanxfer", check=False).returncode == 2
    for gone in (
        "/lib/systemd/system/scanxfer-receiver.service",
        "/etc/systemd/system/multi-user.target.wants/scanxfer-receiver.service",
        "/usr/lib/sysusers.d/scanxfer-receiver.conf",
        "/usr/lib/systemd/user/scanxfer-sender.service",
        "/usr/bin/scanxfer",
        "/var/lib/scanxfer/partial",
        "/var/lib/scanxfer/tls",
        "/var/lib/scanxfer/keys.json",
        "/var/lib/scanxfer/keys.json.lock",
    ):
        assert not container.path(gone).exists(), gone
    listed = container.sh(f"systemctl list-unit-files --no-legend {UNIT}.service", check=False)
    assert listed.stdout.strip() == ""
    state = container.path("/var/lib/scanxfer")
    assert (state / "incoming" / "by_packaged_unit.npy").is_file()
    assert state.stat().st_uid == 0 and state.stat().st_mode & 0o777 == 0o700
