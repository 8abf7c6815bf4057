"""The receiver decides the TLS 1.3 cipher (tls_cipher), and both ends see the one it chose.

Real processes: `scanxfer receive` starts itself again with OPENSSL_CONF when ChaCha20 is
asked for, and a real sender delivers through the session; a plain TLS client, as any older
sender, connects too.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from scanxfer import cipher
from scanxfer.tls import client_context

from .harness import ReceiverProcess, assert_identical, send_once, sender_config, write_scan

PI4 = "tests.integration.pi4_cpu"  # scanxfer on a CPU reported as a Pi 4's
EXPECTED = {"chacha20": "ChaCha20-Poly1305", "aes": "AES-256-GCM"}


def receiver_with(tmp_path: Path, setting: str, program: str = "scanxfer") -> ReceiverProcess:
    settings = tmp_path / "receiver.yaml"
    settings.write_text(f"tls_cipher: {setting}\n")
    return ReceiverProcess(tmp_path / "pi", config=settings, program=program).start()


def deliver_and_check_cipher(tmp_path: Path, receiver: ReceiverProcess, said: str) -> None:
    """A real sender delivers a scan, and says its connection used the cipher `said`."""
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (64, 64), seed=1)
    sender = send_once(sender_config(tmp_path / "sender.yaml", receiver.port, scans))
    assert sender.returncode == 0, sender.log
    connected = rf"connected to receiver \S+:{receiver.port}: TLS 1\.3, {said}$"
    assert re.search(connected, sender.log, re.M), sender.log
    assert_identical(scans, receiver.incoming)


@pytest.mark.parametrize("setting", ["chacha20", "aes"])
def test_the_setting_decides_the_cipher_on_both_ends(tmp_path: Path, setting: str) -> None:
    receiver = receiver_with(tmp_path, setting)
    try:
        deliver_and_check_cipher(tmp_path, receiver, EXPECTED[setting])
    finally:
        receiver.stop()
    started = f"TLS 1.3, {EXPECTED[setting]}: tls_cipher: {setting}; certificate fingerprint"
    assert receiver.log.count(started) == 1, receiver.log


def test_an_older_sender_offering_aes_first_gets_chacha20(tmp_path: Path) -> None:
    receiver = receiver_with(tmp_path, "chacha20")
    try:
        context = client_context()  # OpenSSL's own order: AES-256-GCM first
        with (
            socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as plain,
            context.wrap_socket(plain) as secured,
        ):
            suite = secured.cipher()
    finally:
        receiver.stop()
    assert suite is not None and suite[0] == "TLS_CHACHA20_POLY1305_SHA256"


def test_auto_on_a_cpu_without_aes_gets_chacha20_on_both_ends(tmp_path: Path) -> None:
    receiver = receiver_with(tmp_path, "auto", program=PI4)
    try:
        deliver_and_check_cipher(tmp_path, receiver, "ChaCha20-Poly1305")
    finally:
        receiver.stop()
    started = "TLS 1.3, ChaCha20-Poly1305: this CPU has no AES instructions; certificate"
    assert receiver.log.count(started) == 1, receiver.log


def test_auto_follows_this_machines_cpu(tmp_path: Path) -> None:
    expected = cipher.choose("auto", cipher.read_cpuinfo())
    receiver = receiver_with(tmp_path, "auto")
    receiver.stop()
    said = f"TLS 1.3, {cipher.describe(expected.suite)}: {expected.reason}; certificate"
    assert said in receiver.log, receiver.log
