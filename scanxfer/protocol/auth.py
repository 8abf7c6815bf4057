"""The handshake's proof of a shared key, after SCRAM (RFC 5802) without password stretching.

Each sender holds a secret of 32 random bytes issued by `scanxfer keys add`.  The receiver
keeps only two values derived from it, so a copy of its key file lets nobody log in as the
sender:

    client_key = HMAC(secret, "scanxfer client key")     never leaves the sender
    stored_key = SHA-256(client_key)                     kept by the receiver
    server_key = HMAC(secret, "scanxfer server key")     kept by the receiver

Both ends sign the same transcript (both nonces, the sender's name, the version and the
receiver certificate's fingerprint).  The sender sends client_key XOR HMAC(stored_key,
transcript): only a holder of stored_key can unmask it, and the receiver checks that the
result hashes to stored_key.  The receiver answers HMAC(server_key, transcript), which
proves it knows the sender's key too.  Fresh nonces make every transcript new, so a
recorded handshake cannot be replayed.  No stretching: the secret is random, not a password.
Pure functions on bytes; comparisons run in constant time (hmac.compare_digest).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass

from .events import NONCE_SIZE, PROOF_SIZE

SECRET_SIZE = 32
SECRET_TEXT_LENGTH = 43  # base64url of 32 bytes, without padding
_TRANSCRIPT_LABEL = b"scanxfer handshake v1\0"
_U16 = struct.Struct(">H")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)


@dataclass(frozen=True)
class Verifier:
    """What the receiver keeps of one sender's secret: enough to check, not to impersonate."""

    stored_key: bytes
    server_key: bytes


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def new_secret() -> str:
    """A fresh sender secret as the text that goes into the pairing line and sender.yaml."""
    return encode_secret(secrets.token_bytes(SECRET_SIZE))


def encode_secret(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_secret(text: str) -> bytes:
    """The 32 secret bytes of `text`; ValueError if it is not a scanxfer secret.

    The messages never quote `text`, nor any part of it: it is, or nearly is, a secret.
    """
    if len(text) != SECRET_TEXT_LENGTH:
        raise ValueError(
            f"a key is {SECRET_TEXT_LENGTH} characters of base64url, this one has {len(text)}"
        )
    if not _BASE64URL.fullmatch(text):
        raise ValueError("a key is base64url text (letters, digits, '-' and '_') only")
    raw = base64.urlsafe_b64decode(text + "=")
    if encode_secret(raw) != text:
        # 43 characters carry 258 bits for 256: the last one ends in two zero bits, so 48 of
        # its 64 values are no key's.
        raise ValueError("its last character cannot end a key: a character was changed")
    return raw


def _client_key(secret: bytes) -> bytes:
    return hmac.digest(secret, b"scanxfer client key", "sha256")


def verifier(secret: bytes) -> Verifier:
    """The receiver's record of `secret`."""
    return Verifier(
        stored_key=hashlib.sha256(_client_key(secret)).digest(),
        server_key=hmac.digest(secret, b"scanxfer server key", "sha256"),
    )


def transcript(
    version: int, name: str, receiver_nonce: bytes, sender_nonce: bytes, channel: bytes
) -> bytes:
    """What both proofs sign; `channel` is the receiver certificate's SHA-256 (b"" on plain TCP)."""
    raw_name = name.encode("utf-8", "surrogateescape")
    return b"".join(
        (
            _TRANSCRIPT_LABEL,
            _U16.pack(version),
            _U16.pack(len(raw_name)),
            raw_name,
            receiver_nonce,
            sender_nonce,
            _U16.pack(len(channel)),
            channel,
        )
    )


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def client_proof(secret: bytes, signed: bytes) -> bytes:
    """The sender's answer to the challenge: its client key, masked by a per-handshake pad."""
    client_key = _client_key(secret)
    stored_key = hashlib.sha256(client_key).digest()
    return _xor(client_key, hmac.digest(stored_key, signed, "sha256"))


def check_client_proof(record: Verifier, signed: bytes, proof: bytes) -> bool:
    """True if `proof` was made from the secret behind `record` for this transcript."""
    if len(proof) != PROOF_SIZE:
        return False
    client_key = _xor(proof, hmac.digest(record.stored_key, signed, "sha256"))
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), record.stored_key)


def server_proof(record: Verifier, signed: bytes) -> bytes:
    return hmac.digest(record.server_key, signed, "sha256")


def check_server_proof(secret: bytes, signed: bytes, proof: bytes) -> bool:
    """True if the receiver that sent `proof` holds this sender's verifier."""
    return hmac.compare_digest(server_proof(verifier(secret), signed), proof)


@dataclass(frozen=True)
class FrameKeys:
    """The frame-authentication keys of one connection, one per direction."""

    sender_to_receiver: bytes
    receiver_to_sender: bytes


_FRAME_KEYS_LABEL = b"scanxfer frame keys v1"


def frame_keys(server_key: bytes, handshake: bytes) -> FrameKeys:
    """HKDF-SHA256 (RFC 5869) of `server_key`, salted with the handshake's SHA-256.

    `server_key` never crosses the wire, and both ends hold it (the sender derives it from
    its secret), so an eavesdropper cannot compute these keys.  `handshake` is the SHA-256
    of the four handshake frames as they crossed the wire: fresh nonces make the keys new for
    every connection, and a handshake altered on the way (an option stripped, another window)
    leaves the two ends with different keys, so the first frame after it fails its tag.
    """
    prk = hmac.digest(handshake, server_key, "sha256")  # HKDF-Extract(salt, IKM)

    def expand(direction: bytes) -> bytes:  # HKDF-Expand for one block of 32 bytes
        return hmac.digest(prk, _FRAME_KEYS_LABEL + b" " + direction + b"\x01", "sha256")

    return FrameKeys(expand(b"sender to receiver"), expand(b"receiver to sender"))
