"""Which TLS 1.3 cipher the receiver's sessions use, and how OpenSSL is made to use it.

A Pi 4 (Cortex-A72) has no ARMv8 Crypto Extensions: AES-GCM runs in software there, at about
80 MB/s, while ChaCha20-Poly1305, designed for CPUs without AES instructions, runs several
times faster.  OpenSSL as used from Python picks AES-256-GCM whatever the CPU, and Python 3.11
has no API for TLS 1.3 cipher suites (`SSLContext.set_ciphers` covers TLS 1.2 and older).

So the receiver, which decides (server preference), asks through OpenSSL's configuration for
the process: `openssl-chacha20.cnf`, shipped beside the default settings, lists ChaCha20 first
and turns server preference on.  OpenSSL reads `OPENSSL_CONF` once, when the library first
starts; in Python that has happened by the time hashlib is imported, long before the settings
are read.  So `scanxfer receive` executes itself again, once, with `OPENSSL_CONF` set, when its
choice needs it (`follow`).  Senders offer every TLS 1.3 suite as before, so a sender of any
version connects, and gets what the receiver chose.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

AUTO, AES, CHACHA20 = "auto", "aes", "chacha20"
CHOICES = (AUTO, AES, CHACHA20)
# The TLS 1.3 suite each choice puts first, and the names people know them by.
SUITES = {AES: "TLS_AES_256_GCM_SHA384", CHACHA20: "TLS_CHACHA20_POLY1305_SHA256"}
_NAMES = {
    "TLS_AES_256_GCM_SHA384": "AES-256-GCM",
    "TLS_AES_128_GCM_SHA256": "AES-128-GCM",
    "TLS_CHACHA20_POLY1305_SHA256": "ChaCha20-Poly1305",
}
CPUINFO = Path("/proc/cpuinfo")
_CONFIG_FILE = "openssl-chacha20.cnf"


@dataclass(frozen=True)
class Choice:
    """The cipher the receiver's sessions use (AES or CHACHA20), and why, for the log."""

    cipher: str
    reason: str

    @property
    def suite(self) -> str:
        return SUITES[self.cipher]


def cpu_has_aes(cpuinfo: str) -> bool | None:
    """Whether the CPU has AES instructions, from /proc/cpuinfo text; None if it does not say.

    x86 lists them as `aes` in its `flags` line, ARM (32 and 64 bit) in its `Features` line.
    """
    answers = [
        "aes" in value.split()
        for key, _, value in (line.partition(":") for line in cpuinfo.splitlines())
        if key.strip() in ("flags", "Features")
    ]
    return any(answers) if answers else None


def choose(setting: str, cpuinfo: str) -> Choice:
    """The cipher for `setting` (one of CHOICES) on a CPU that /proc/cpuinfo says `cpuinfo` of."""
    if setting != AUTO:
        return Choice(setting, f"tls_cipher: {setting}")
    has_aes = cpu_has_aes(cpuinfo)
    if has_aes is False:
        return Choice(CHACHA20, "this CPU has no AES instructions")
    if has_aes is None:
        return Choice(AES, "this CPU does not say whether it has AES instructions")
    return Choice(AES, "this CPU has AES instructions")


def read_cpuinfo() -> str:
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def openssl_config(choice: Choice) -> str | None:
    """The OpenSSL configuration file the process needs for `choice`; None: OpenSSL's own."""
    return _shipped_config() if choice.cipher == CHACHA20 else None


def _shipped_config() -> str:
    return str(resources.files("scanxfer") / "defaults" / _CONFIG_FILE)


def follow(choice: Choice) -> None:
    """Make this process's OpenSSL configuration the one `choice` needs, by executing this
    very command again with `OPENSSL_CONF` set (or unset); returns when it already is.

    The process keeps its pid, its standard streams and its environment, so a systemd
    service (Type=notify, NotifyAccess=main) sees one process start.
    """
    wanted, current = openssl_config(choice), os.environ.get("OPENSSL_CONF")
    if current == wanted or (wanted is None and current != _shipped_config()):
        return  # already so; or OpenSSL's own choice, under a configuration of the user's
    if wanted is None:
        del os.environ["OPENSSL_CONF"]
    else:
        os.environ["OPENSSL_CONF"] = wanted
    log.debug("starting again with OPENSSL_CONF=%s, for %s", wanted, describe(choice.suite))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def first_suite(context: ssl.SSLContext) -> str | None:
    """The TLS 1.3 suite `context` puts first: the one a server with its own order chooses."""
    for cipher in context.get_ciphers():
        if cipher["protocol"] == "TLSv1.3":
            return cipher["name"]
    return None


def describe(suite: str) -> str:
    """`TLS_CHACHA20_POLY1305_SHA256` as people say it: ChaCha20-Poly1305."""
    return _NAMES.get(suite, suite)
