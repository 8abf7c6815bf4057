"""The very same .deb on arm64, the Raspberry Pi's architecture: an arm64 bookworm booted
under qemu-user-static (binfmt), installed with the user's commands, receiving from the host.

Emulation makes it several times slower, so it runs as `make system-test-arm64`, not in
`make test`; CI runs both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .container import booted, free_port, require_host_tools
from .installed import (
    STATE,
    UNIT,
    Receiver,
    assert_identical,
    install,
    make_scans,
    scanxfer_on_host,
    send_once,
    set_conffile_key,
)

pytestmark = [pytest.mark.system, pytest.mark.arm64]


@pytest.fixture(scope="module")
def receiver(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    require_host_tools("qemu-aarch64-static")
    binfmt = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    assert binfmt.is_file() and "enabled" in binfmt.read_text(), (
        "qemu-aarch64 is not registered with binfmt_misc; `bash .ci/run` registers it"
    )
    with booted("arm64", tmp_path_factory.mktemp("arm64"), boot_timeout=600) as container:
        yield install(container, deb, free_port())


def test_the_same_deb_receives_scans_from_a_paired_sender_on_arm64(
    receiver: Receiver, tmp_path: Path
) -> None:
    container = receiver.container
    assert container.sh("uname -m").stdout.strip() == "aarch64"
    assert container.sh("dpkg --print-architecture").stdout.strip() == "arm64"
    assert container.sh(f"systemctl is-active {UNIT}").stdout.strip() == "active"

    # The service made its certificate (openssl, under emulation) before anyone asked.
    owner_and_mode = container.sh(f"stat -c '%U %a' {STATE}/tls/key.pem").stdout.split()
    assert owner_and_mode == ["scanxfer", "600"]

    sender = receiver.pair_host_sender("host-pc", tmp_path)
    scans = make_scans(tmp_path / "scans", "arm64")
    result = send_once(sender, tmp_path / "scans")
    assert result.returncode == 0, result.stderr
    assert_identical(tmp_path / "scans", receiver.incoming(), scans)
    assert all(f"received {relative} " in receiver.journal() for relative in scans)


@pytest.mark.parametrize(
    ("setting", "said"), [("chacha20", "ChaCha20-Poly1305"), ("aes", "AES-256-GCM")]
)
def test_the_package_negotiates_the_cipher_its_setting_asks_for(
    receiver: Receiver, tmp_path: Path, setting: str, said: str
) -> None:
    container = receiver.container
    set_conffile_key(container, "tls_cipher", setting)
    since = container.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    container.sh(f"systemctl restart {UNIT}")
    receiver.wait_active()
    started = f"TLS 1.3, {said}: tls_cipher: {setting}; certificate fingerprint"
    assert receiver.journal(f"--since '{since}'").count(started) == 1, receiver.journal()
    sender = receiver.pair_host_sender(f"host-{setting}", tmp_path)
    (tmp_path / "scans").mkdir()
    result = scanxfer_on_host(
        "send", "--once", "-c", str(sender), "--watch", str(tmp_path / "scans")
    )
    assert result.returncode == 0, result.stderr
    connected = rf"connected to receiver \S+: TLS 1\.3, {said}$"
    assert re.search(connected, result.stderr, re.M), result.stderr
