"""The receiver's TLS identity (scanxfer.tls): made with the real openssl, used in real
TLS 1.3 handshakes over socket pairs, checked by pin."""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import scanxfer
from scanxfer import tls
from scanxfer.config.values import parse_fingerprint

REPO = Path(scanxfer.__file__).parents[1]


def _openssl(cert: Path, *options: str) -> str:
    result = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", *options],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def _common_name(cert: Path) -> str:
    return _openssl(cert, "-subject", "-nameopt", "utf8").strip().removeprefix("subject=CN=")


@pytest.fixture
def identity(tmp_path: Path) -> tls.ReceiverIdentity:
    return tls.ensure_identity(tmp_path / "state", "pi")


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """Both ends of a real TLS connection over a socket pair, handshakes done."""
    left, right = socket.socketpair()
    for sock in (left, right):
        sock.settimeout(30)  # a give-up bound, so a broken handshake fails instead of hanging
    accepted: list[ssl.SSLSocket] = []
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            accepted.append(server.wrap_socket(left, server_side=True))
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        connected = client.wrap_socket(right)
    except (ssl.SSLError, OSError):
        right.close()
        thread.join()
        left.close()
        raise
    thread.join()
    assert not errors, errors
    try:
        yield accepted[0], connected
    finally:
        accepted[0].close()
        connected.close()


def test_a_new_identity_is_an_ecdsa_p256_certificate_for_a_century(
    identity: tls.ReceiverIdentity,
) -> None:
    text = _openssl(identity.cert_path, "-text")
    assert "ASN1 OID: prime256v1" in text
    assert "Signature Algorithm: ecdsa-with-SHA256" in text
    assert _common_name(identity.cert_path) == "scanxfer receiver pi"
    not_after = next(line for line in text.splitlines() if "Not After" in line)
    year = int(not_after.split()[-2])
    assert year >= datetime.datetime.now(datetime.UTC).year + 99


def test_the_fingerprint_is_the_sha256_of_the_certificate_der(
    identity: tls.ReceiverIdentity,
) -> None:
    der = ssl.PEM_cert_to_DER_cert(identity.cert_path.read_text())
    assert identity.fingerprint == hashlib.sha256(der).hexdigest()
    assert tls.fingerprint_of(der) == identity.fingerprint
    assert len(identity.fingerprint) == 64 and identity.fingerprint == identity.fingerprint.lower()


def test_the_key_is_private_and_its_directory_closed(identity: tls.ReceiverIdentity) -> None:
    assert identity.key_path.stat().st_mode & 0o777 == 0o600
    assert identity.cert_path.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in identity.cert_path.parent.iterdir()) == ["cert.pem", "key.pem"]


def test_an_existing_identity_is_loaded_not_replaced(
    tmp_path: Path, identity: tls.ReceiverIdentity
) -> None:
    before = identity.cert_path.read_bytes(), identity.key_path.read_bytes()
    again = tls.ensure_identity(tmp_path / "state", "another name")
    assert again == identity
    assert tls.load_identity(tmp_path / "state") == identity
    assert (identity.cert_path.read_bytes(), identity.key_path.read_bytes()) == before


def test_names_openssl_would_misread_are_escaped(tmp_path: Path) -> None:
    made = tls.ensure_identity(tmp_path, "lab/pi+2\\x é" + "y" * 80)
    name = _common_name(made.cert_path)
    assert name == ("scanxfer receiver lab/pi+2\\x é" + "y" * 80)[:64]


def test_load_identity_never_creates_one(tmp_path: Path) -> None:
    with pytest.raises(tls.TLSSetupError, match="does not exist"):
        tls.load_identity(tmp_path)
    assert not (tmp_path / "tls").exists()


@pytest.mark.parametrize("survivor", ["cert.pem", "key.pem"])
def test_half_an_identity_is_refused_and_left_alone(tmp_path: Path, survivor: str) -> None:
    made = tls.ensure_identity(tmp_path, "pi")
    gone = made.key_path if survivor == "cert.pem" else made.cert_path
    gone.unlink()
    kept = (made.cert_path.parent / survivor).read_bytes()
    for call in (lambda: tls.ensure_identity(tmp_path, "pi"), lambda: tls.load_identity(tmp_path)):
        with pytest.raises(tls.TLSSetupError, match=f"{gone.name} does not.*delete"):
            call()
    assert (made.cert_path.parent / survivor).read_bytes() == kept
    assert not gone.exists()


def test_a_key_that_does_not_belong_to_the_certificate_is_refused(tmp_path: Path) -> None:
    mine = tls.ensure_identity(tmp_path / "a", "pi")
    other = tls.ensure_identity(tmp_path / "b", "pi")
    mine.key_path.write_bytes(other.key_path.read_bytes())
    with pytest.raises(tls.TLSSetupError, match="cannot use"):
        tls.load_identity(tmp_path / "a")


def test_a_damaged_certificate_is_refused(tmp_path: Path) -> None:
    made = tls.ensure_identity(tmp_path, "pi")
    made.cert_path.write_text("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
    with pytest.raises(tls.TLSSetupError, match=r"not valid base64.*delete"):
        tls.load_identity(tmp_path)


def test_without_openssl_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(tls.TLSSetupError, match="apt install openssl"):
        tls.ensure_identity(tmp_path / "state", "pi")
    assert list((tmp_path / "state" / "tls").iterdir()) == []


def test_two_processes_creating_at_once_end_with_one_usable_identity(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from scanxfer.tls import ensure_identity; "
        "print(ensure_identity(Path(sys.argv[1]), sys.argv[2]).fingerprint)"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), f"pi{n}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    printed = {run.communicate(timeout=120)[0].strip() for run in runs}
    assert [run.returncode for run in runs] == [0] * 8
    assert printed == {tls.load_identity(tmp_path).fingerprint}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_root_hands_the_files_to_the_owner_of_the_state_dir(tmp_path: Path) -> None:
    os.chown(tmp_path, 65534, 65534)
    made = tls.ensure_identity(tmp_path, "pi")
    for path in (made.cert_path.parent, made.cert_path, made.key_path):
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534), path


def test_a_real_tls13_handshake_shows_the_pinned_fingerprint(
    identity: tls.ReceiverIdentity,
) -> None:
    for server_side, client_side in _handshake(tls.server_context(identity), tls.client_context()):
        assert client_side.version() == "TLSv1.3"
        assert tls.peer_fingerprint(client_side) == identity.fingerprint
        assert tls.pin_matches(tls.peer_fingerprint(client_side), identity.fingerprint)
        client_side.sendall(b"ping")
        assert server_side.recv(4) == b"ping"


def test_a_sender_talking_to_another_receiver_sees_a_different_fingerprint(
    tmp_path: Path, identity: tls.ReceiverIdentity
) -> None:
    impostor = tls.ensure_identity(tmp_path / "impostor", "pi")
    for _, client_side in _handshake(tls.server_context(impostor), tls.client_context()):
        assert not tls.pin_matches(tls.peer_fingerprint(client_side), identity.fingerprint)


def test_the_client_refuses_anything_older_than_tls13(identity: tls.ReceiverIdentity) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_cert_chain(identity.cert_path, identity.key_path)
    with pytest.raises(ssl.SSLError):
        for _ in _handshake(old, tls.client_context()):
            pass


def test_a_peer_without_a_certificate_has_no_fingerprint(
    identity: tls.ReceiverIdentity,
) -> None:
    # Senders present no certificate, so the receiver's end shows the case.
    for server_side, _ in _handshake(tls.server_context(identity), tls.client_context()):
        with pytest.raises(ssl.SSLError, match="no certificate"):
            tls.peer_fingerprint(server_side)


@pytest.mark.parametrize(
    ("actual", "expected", "same"),
    [
        ("ab" * 32, "ab" * 32, True),
        ("ab" * 32, "AB" * 32, True),
        ("ab" * 32, ":".join(["AB"] * 32), True),
        ("ab" * 32, "ab" * 31 + "ac", False),
        ("", "", False),
        ("ab" * 32, "ab" * 31, False),
    ],
)
def test_pin_matches(actual: str, expected: str, same: bool) -> None:
    assert tls.pin_matches(actual, expected) is same


def test_the_human_form_of_a_fingerprint_reads_back(identity: tls.ReceiverIdentity) -> None:
    shown = tls.format_fingerprint(identity.fingerprint)
    assert len(shown) == 95 and shown.count(":") == 31 and shown == shown.upper()
    assert parse_fingerprint(shown) == identity.fingerprint
