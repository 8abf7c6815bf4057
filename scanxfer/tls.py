"""The receiver's TLS identity: a self-signed certificate that senders pin by fingerprint.

There is no certificate authority, as in Syncthing: the receiver makes its own key and
certificate on first use, `scanxfer keys add` prints the certificate's SHA-256 in the
pairing line, and the sender accepts exactly that certificate.  A lab network has no names a
CA could vouch for, and a pin cannot expire or be issued to someone else.

The standard library cannot make certificates and no new Python dependency is allowed, so
the `openssl` command (a dependency of the Debian package) makes them.  Both ends speak
TLS 1.3 only: every peer is scanxfer, so there is nothing older to talk to.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scanxfer import atomic
from scanxfer.errors import ScanxferError
from scanxfer.tls_channel import TLSChannel

TLS_DIR_NAME = "tls"
CERT_FILE_NAME = "cert.pem"
KEY_FILE_NAME = "key.pem"
VALIDITY_DAYS = 36525  # 100 years: the pin is the trust, and an expiry would only break it
_OPENSSL_TIMEOUT = 120.0  # seconds; key generation on a loaded Pi under emulation is slow
_CN_PREFIX = "scanxfer receiver "
_CN_MAX = 64  # RFC 5280 ub-common-name; openssl refuses longer names
_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL
)


class TLSSetupError(ScanxferError):
    """The identity cannot be made or used; the message says what to do about it."""


@dataclass(frozen=True)
class ReceiverIdentity:
    """Where the receiver's certificate and key are, and the fingerprint senders pin."""

    cert_path: Path
    key_path: Path
    fingerprint: str  # 64 lower-case hex digits: SHA-256 of the certificate's DER


def ensure_identity(state_dir: Path, common_name: str) -> ReceiverIdentity:
    """The identity in <state_dir>/tls, made first if there is none.

    Called by the receiver at start and by `scanxfer keys add`, possibly at the same moment,
    so creation holds a lock on the directory: two processes making a key each could
    otherwise leave one's certificate beside the other's key.
    """
    try:
        atomic.make_dirs(state_dir)
        tls_dir, owner = state_dir / TLS_DIR_NAME, atomic.state_owner(state_dir)
        atomic.make_dir(tls_dir, 0o700, owner)
        fd = os.open(tls_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not (tls_dir / CERT_FILE_NAME).exists() and not (tls_dir / KEY_FILE_NAME).exists():
                _create(tls_dir, common_name, owner)
        finally:
            os.close(fd)  # releases the lock
    except PermissionError as exc:
        raise TLSSetupError(atomic.permission_hint(exc.filename or state_dir, state_dir)) from None
    return load_identity(state_dir)


def load_identity(state_dir: Path) -> ReceiverIdentity:
    """The existing identity in <state_dir>/tls, checked to be usable; never creates one."""
    try:
        identity = _load(state_dir / TLS_DIR_NAME)
    except PermissionError as exc:
        raise TLSSetupError(atomic.permission_hint(exc.filename or state_dir, state_dir)) from None
    server_context(identity)  # proves the key is readable and belongs to the certificate
    return identity


def _load(tls_dir: Path) -> ReceiverIdentity:
    cert_path, key_path = tls_dir / CERT_FILE_NAME, tls_dir / KEY_FILE_NAME
    start_over = (
        f"to start over, delete {tls_dir} and restart the receiver, then pair every sender "
        f"again (scanxfer keys add NAME --replace), as the fingerprint changes"
    )
    present = [path for path in (cert_path, key_path) if path.exists()]
    if len(present) == 1:
        missing = key_path if present[0] == cert_path else cert_path
        raise TLSSetupError(f"{present[0]} exists but {missing} does not; {start_over}")
    if not present:
        raise TLSSetupError(
            f"{cert_path} does not exist; the receiver makes it when it starts with tls: true, "
            f"and so does `scanxfer keys add`"
        )
    try:
        der = _first_certificate(cert_path.read_text(encoding="ascii", errors="replace"))
    except ValueError as exc:
        raise TLSSetupError(f"{cert_path}: {exc}; {start_over}") from None
    return ReceiverIdentity(cert_path, key_path, fingerprint_of(der))


def server_context(identity: ReceiverIdentity) -> ssl.SSLContext:
    """The receiver's side: TLS 1.3 only, presenting the identity's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    # Senders never resume a session (each connection checks the pin afresh), so session
    # tickets would be bytes sent for nothing after every handshake.
    context.num_tickets = 0
    # The receiver's order of TLS 1.3 suites decides, not the sender's (see scanxfer.cipher).
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(identity.cert_path, identity.key_path)
    except PermissionError:
        state_dir = identity.key_path.parent.parent
        raise TLSSetupError(atomic.permission_hint(identity.key_path, state_dir)) from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(
            f"cannot use {identity.cert_path} with {identity.key_path} ({exc}); if either was "
            f"replaced by hand, delete {identity.cert_path.parent} and restart the receiver, "
            f"then pair every sender again (scanxfer keys add NAME --replace)"
        ) from None
    return context


def client_context() -> ssl.SSLContext:
    """The sender's side: TLS 1.3 only, trusting no CA; the caller checks the pinned fingerprint.

    Verification is off because the receiver's certificate is self-signed and names no
    host: pin_matches(peer_fingerprint(sock), configured) is the whole check, and the
    sender must make it before sending anything that matters.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # must come before verify_mode, or ssl refuses CERT_NONE
    context.verify_mode = ssl.CERT_NONE
    return context


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def peer_fingerprint(sock: ssl.SSLSocket | TLSChannel) -> str:
    """The fingerprint of the certificate the other end presented; ssl.SSLError if none."""
    der = sock.getpeercert(binary_form=True)
    if not isinstance(der, bytes) or not der:
        raise ssl.SSLError("the peer presented no certificate")
    return fingerprint_of(der)


def pin_matches(actual: str, expected: str) -> bool:
    """True if two fingerprints are the same, in any case, with or without colons.

    Compared in constant time, so timing reveals nothing about the pinned value.
    """
    left, right = _normal(actual), _normal(expected)
    return bool(left) and hmac.compare_digest(left, right)


def format_fingerprint(fingerprint: str) -> str:
    """'ab12...' -> 'AB:12:...', the way people compare fingerprints by eye."""
    text = _normal(fingerprint).decode("ascii", "replace").upper()
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2))


def _normal(fingerprint: str) -> bytes:
    return fingerprint.strip().lower().replace(":", "").encode("utf-8", "replace")


def _first_certificate(pem: str) -> bytes:
    match = _PEM_CERTIFICATE.search(pem)
    if match is None:
        raise ValueError("no PEM certificate in it")
    try:
        return base64.b64decode("".join(match[1].split()), validate=True)
    except binascii.Error:
        raise ValueError("its certificate is not valid base64") from None


def _create(tls_dir: Path, common_name: str, owner: atomic.Owner | None) -> None:
    """Make key and certificate in a private scratch directory, then rename both into place.

    The key is renamed first: a crash between the two renames leaves a key without a
    certificate, which load_identity reports, rather than a certificate nobody can use.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TLSSetupError(
            "the openssl command is missing, and the receiver needs it once to make its TLS "
            "certificate; install it: apt install openssl (or set tls: false)"
        )
    with tempfile.TemporaryDirectory(dir=tls_dir, prefix=".new-") as scratch:
        key, cert = Path(scratch) / KEY_FILE_NAME, Path(scratch) / CERT_FILE_NAME
        _run_openssl(openssl, key, cert, common_name)
        for path, mode in ((key, 0o600), (cert, 0o644)):
            if owner is not None:
                os.chown(path, *owner)
            os.chmod(path, mode)
            atomic.fsync_file(path)
        os.replace(key, tls_dir / KEY_FILE_NAME)
        os.replace(cert, tls_dir / CERT_FILE_NAME)
        atomic.fsync_dir(tls_dir)


def _run_openssl(openssl: str, key: Path, cert: Path, common_name: str) -> None:
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-sha256", "-days", str(VALIDITY_DAYS), "-nodes", "-utf8",
        "-subj", f"/CN={_subject_value(common_name)}",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_OPENSSL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TLSSetupError(f"cannot run {openssl} to make the TLS certificate: {exc}") from None
    if result.returncode != 0 or not key.exists() or not cert.exists():
        detail = " ".join(result.stderr.split()[-40:]) or f"exit status {result.returncode}"
        raise TLSSetupError(
            f"{openssl} could not make the TLS certificate ({detail}); check that `openssl "
            f"version` works, or set tls: false"
        )


def _subject_value(common_name: str) -> str:
    """The CN for `openssl req -subj`: prefixed, cut to the legal length, escaped.

    In -subj, '/' starts the next attribute and '+' joins a multi-valued one, so both (and
    the escape character itself) are escaped with a backslash.
    """
    value = (_CN_PREFIX + common_name)[:_CN_MAX]
    return re.sub(r"([\\/+])", r"\\\1", value)
