"""Who gets in: the TLS identity, the sender keys, and the brake on failed handshakes.

A connection reaches the protocol's OFFER only through this gate: TLS first (unless the
administrator chose `tls: false`), then the key proof of `protocol.auth`.  Everything a
stranger can make the receiver do before that is bounded: one TLS handshake, one HELLO of
at most 64 KiB, one hash.  Failures are logged with the peer address, and an address that
keeps failing is refused outright for the rest of the minute, so a scan of the LAN or a
brute-force attempt neither fills the journal nor keeps a thread busy.
"""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass

from .. import cipher
from ..config import ReceiverConfig
from ..keys import Keyring, keys_path
from ..keys.seen import SeenLog, seen_path
from ..protocol import auth
from ..tls import ensure_identity, format_fingerprint, server_context
from ..tls_channel import TLSChannel

log = logging.getLogger("scanxfer.receiver")

FAILURE_WINDOW_SECONDS = 60.0
_TRACKED_ADDRESSES = 4096  # beyond this, the oldest records are dropped: memory stays bounded


@dataclass(frozen=True)
class Verdict:
    """The outcome of a key proof; `record` is set only when it passed."""

    record: auth.Verifier | None
    reason: str


class FailureBrake:
    """Count failed handshakes per address; past the limit, refuse that address for a while."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}
        self.total = 0  # since the start, for the metrics

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.setdefault(address, deque())
        while times and now - times[0] > FAILURE_WINDOW_SECONDS:
            times.popleft()
        return times

    def blocked(self, address: str) -> bool:
        with self._lock:
            if address not in self._failures:
                return False
            return len(self._recent(address, time.monotonic())) >= self.limit

    def failed(self, address: str) -> bool:
        """Record one failure; True when this one reaches the limit (log it once, then quiet)."""
        with self._lock:
            if len(self._failures) >= _TRACKED_ADDRESSES and address not in self._failures:
                del self._failures[next(iter(self._failures))]
            self.total += 1
            times = self._recent(address, time.monotonic())
            times.append(time.monotonic())
            return len(times) == self.limit


class Gate:
    """The receiver's credentials and the checks every new connection goes through."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.keyring = Keyring(keys_path(config.state_dir))
        self.seen = SeenLog(seen_path(config.state_dir))  # for `scanxfer keys list`
        self.brake = FailureBrake(config.max_auth_failures)
        self.context: ssl.SSLContext | None = None
        self.channel = b""  # what the proofs are bound to: the certificate, when there is one
        self.fingerprint: str | None = None
        if config.tls:
            identity = ensure_identity(config.state_dir, config.name)
            self.context = server_context(identity)
            self.channel = bytes.fromhex(identity.fingerprint)
            self.fingerprint = identity.fingerprint
            log.info(
                "TLS 1.3, %s; certificate fingerprint (SHA-256) %s",
                _cipher_in_use(self.context, config.tls_cipher),
                format_fingerprint(identity.fingerprint),
            )
        else:
            log.warning(
                "tls is false: files and names cross the network unencrypted, and tagging "
                "every byte costs more CPU than TLS would (README: Raspberry Pi budget)"
            )
        if not self.keyring.active_names():
            log.warning(
                "no sender has a key yet, so nobody can deliver: issue one with "
                "`sudo scanxfer keys add NAME` and paste the line it prints into `scanxfer pair`"
            )

    def update(self, config: ReceiverConfig) -> None:
        """Apply reloaded settings (TLS itself needs a restart)."""
        self.brake.limit = config.max_auth_failures

    def wrap(self, sock: socket.socket) -> socket.socket | TLSChannel:
        """The connection as the protocol will use it; the TLS handshake is left to the caller."""
        if self.context is None:
            return sock
        return TLSChannel(sock, self.context)

    def check(self, name: str, signed: bytes, proof: bytes) -> Verdict:
        """Whether `proof` shows the key issued to `name`; the reason is for the log only."""
        entry = self.keyring.lookup(name)
        # An unknown name costs the same work as a known one: timing tells nothing.
        record = entry.verifier if entry is not None else _decoy()
        passed = auth.check_client_proof(record, signed, proof)
        if entry is None:
            return Verdict(None, f"no key was issued to {name!r} (`scanxfer keys add {name}`)")
        if not entry.active:
            return Verdict(None, f"the key of {name!r} was revoked on {entry.revoked}")
        if not passed:
            return Verdict(None, f"wrong key for {name!r} (pair the sender again)")
        return Verdict(record, "")

    def refused(self, peer: str, host: str, reason: str) -> None:
        """Log a failed handshake from `peer` (host:port), counted against its `host`.

        Quiet once the host is over the limit: its next connections are closed at accept.
        """
        already_blocked = self.brake.blocked(host)
        reached_limit = self.brake.failed(host)
        if already_blocked:
            return
        if reached_limit:
            log.warning(
                "%s: handshake failed: %s; %d failures within a minute from %s, so its "
                "connections are refused for up to a minute",
                peer,
                reason,
                self.brake.limit,
                host,
            )
        else:
            log.warning("%s: handshake failed: %s", peer, reason)


def _decoy() -> auth.Verifier:
    return auth.verifier(secrets.token_bytes(auth.SECRET_SIZE))


def _cipher_in_use(context: ssl.SSLContext, setting: str) -> str:
    """The cipher the sessions will use and why; a warning when OpenSSL would not use it
    (a receiver started some other way than as the `scanxfer receive` command)."""
    choice = cipher.choose(setting, cipher.read_cpuinfo())
    first = cipher.first_suite(context)
    if first != choice.suite:
        log.warning(
            "OpenSSL here prefers %s, not %s (%s): run the receiver as the "
            "`scanxfer receive` command, which sets OPENSSL_CONF",
            cipher.describe(first or "none"),
            cipher.describe(choice.suite),
            choice.reason,
        )
        return cipher.describe(first or "none")
    return f"{cipher.describe(choice.suite)}: {choice.reason}"
