"""The pairing line: everything a sender needs to reach one receiver, as one line to copy.

    scanxfer://NAME:KEY@HOST:PORT/?fingerprint=HEX64      (TLS, the receiver's pinned certificate)
    scanxfer://NAME:KEY@HOST:PORT/?tls=off                 (plain TCP; the key is still proved)

`scanxfer keys add` prints it on the receiver, `scanxfer pair` reads it on the sender and
writes it into sender.yaml.  One line, because the people doing this copy it between two
terminals, and five values copied one by one is five chances to get one wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from scanxfer import atomic
from scanxfer.config import Address, ConfigError, load_sender_config, parse_address
from scanxfer.config.edit import set_top_level_keys
from scanxfer.config.values import parse_fingerprint
from scanxfer.keys import check_sender_name
from scanxfer.protocol.auth import decode_secret

SCHEME = "scanxfer"
T = TypeVar("T")
_NEW_FILE_HEADER = (
    "# Your sender settings, written by `scanxfer pair` from the defaults below: only\n"
    "# receiver, name, key, fingerprint and tls were changed. Edit the rest freely.\n"
    "#\n"
)


@dataclass(frozen=True)
class Pairing:
    """One sender's way to one receiver; `fingerprint` is set exactly when `tls` is on."""

    host: str  # bare, without IPv6 brackets
    port: int
    name: str
    secret: str
    fingerprint: str | None
    tls: bool

    def __post_init__(self) -> None:
        if self.tls != (self.fingerprint is not None):
            raise ValueError("a pairing has a fingerprint exactly when it uses TLS")

    @property
    def address(self) -> Address:
        return Address(self.host, self.port)


def format_pairing(pairing: Pairing) -> str:
    query = f"fingerprint={pairing.fingerprint}" if pairing.tls else "tls=off"
    return f"{SCHEME}://{pairing.name}:{pairing.secret}@{pairing.address}/?{query}"


def parse_pairing(text: str) -> Pairing:
    """The pairing in `text`; ValueError saying what is wrong with it otherwise.

    Surrounding quotes are dropped: the receiver prints the line inside a quoted command,
    and half the people copying it take the quotes along.  No message quotes the line or a
    part of it: a line cut or changed in the wrong place puts the key where a name, a port
    or a fingerprint should be, and an error message ends up in logs and bug reports.
    """
    line = text.strip().strip("'\"").strip()
    if not line.startswith(f"{SCHEME}://"):
        raise _not_pairing(f"it does not start with {SCHEME}://")
    try:
        parts = urlsplit(line)
    except ValueError:
        raise _not_pairing("its receiver address (after the '@') is not HOST:PORT") from None
    if "@" not in parts.netloc or parts.username is None or parts.password is None:
        raise _not_pairing("it has no NAME:KEY@ before the receiver's address")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if parts.hostname is None or not port:
        raise _not_pairing("it has no HOST:PORT after the '@' (a port from 1 to 65535)")
    if parts.path not in ("", "/") or parts.fragment:
        raise _not_pairing("it has text after the address that is not ?fingerprint= or ?tls=")
    fingerprint = _checked(_fingerprint, parts.query)
    return Pairing(
        host=_checked(_host, parts.hostname, port),
        port=port,
        name=_checked(check_sender_name, parts.username, reason=_BAD_NAME),
        secret=_checked(_secret, parts.password),
        fingerprint=fingerprint,
        tls=fingerprint is not None,
    )


_BAD_NAME = (
    "the sender's name (before the ':') must be 1 to 64 letters, digits, '.', '_' or '-', "
    "starting with a letter or digit"
)


def _checked(check: Callable[..., T], *values: Any, reason: str | None = None) -> T:
    """check(*values), with a ValueError turned into a pairing-line error (`reason`, or its own
    message when that is known to quote nothing of the line)."""
    try:
        return check(*values)
    except ValueError as exc:
        raise _not_pairing(reason or str(exc)) from None


def _host(hostname: str, port: int) -> str:
    try:
        return parse_address(str(Address(hostname, port)), default_host="").host
    except ValueError:
        raise ValueError(
            "its receiver address (after the '@') is not a host name or IP address"
        ) from None


def _secret(text: str) -> str:
    try:
        decode_secret(text)
    except ValueError as exc:  # decode_secret's messages quote nothing of the key
        raise ValueError(f"its key (between ':' and '@') is wrong: {exc}") from None
    return text


def write_sender_config(path: Path, pairing: Pairing) -> None:
    """Put the pairing into the sender settings at `path`, keeping everything else in it.

    An existing file keeps every other line and comment: only the lines of the paired keys
    are replaced, and those it lacks are appended.  A new file starts from the commented
    defaults, so the user sees every setting there is.  The result must load as sender
    settings before it replaces anything (ConfigError otherwise, naming `path`), and is
    private (mode 600): it holds the key.
    """
    path = Path(os.path.realpath(path))  # edit a symlinked file where it is, keep the link
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        defaults = resources.files("scanxfer") / "defaults" / "sender.yaml"
        text = _NEW_FILE_HEADER + defaults.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot read it ({exc}); fix or remove it, then pair again"
        ) from None
    atomic.make_dirs(path.parent)
    updated = set_top_level_keys(text, _yaml_values(pairing), by="scanxfer pair")
    atomic.write(path, updated.encode("utf-8"), mode=0o600, check=lambda temp: _check(temp, path))


def _yaml_values(pairing: Pairing) -> dict[str, str]:
    # JSON strings are valid YAML double-quoted scalars, and quoting keeps YAML from reading
    # a name like "no" or "1e3" as a boolean or a number.
    return {
        "receiver": json.dumps(str(pairing.address)),
        "name": json.dumps(pairing.name),
        "key": json.dumps(pairing.secret),
        "fingerprint": "null" if pairing.fingerprint is None else json.dumps(pairing.fingerprint),
        "tls": "true" if pairing.tls else "false",
    }


def _check(temporary: Path, path: Path) -> None:
    try:
        load_sender_config(temporary)
    except ConfigError as exc:
        message = str(exc).replace(str(temporary), str(path))
        raise ConfigError(f"{message}; {path} was left unchanged") from None


def _fingerprint(query: str) -> str | None:
    """The fingerprint from `?fingerprint=HEX`, or None from `?tls=off`."""
    must = "it must end in ?fingerprint=<64 hex digits> or ?tls=off"
    try:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        fields = {}
    if fields == {"tls": ["off"]}:
        return None
    if fields.keys() == {"fingerprint"} and len(fields["fingerprint"]) == 1:
        try:
            return parse_fingerprint(fields["fingerprint"][0])
        except ValueError:
            raise ValueError(f"{must}: its fingerprint is not 64 hex digits") from None
    raise ValueError(must)


def _not_pairing(reason: str) -> ValueError:
    return ValueError(
        f"not a pairing line: {reason}; copy the whole line printed by `scanxfer keys add`"
    )
