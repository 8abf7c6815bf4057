"""Setting values: sizes, durations, addresses and the rest, parsed from YAML or command line.

Each parser takes whatever YAML produced (or the text given on the command line) and raises
ValueError with what would have been accepted; the loader adds the file, line and key.  The
parser factories (`in_range`, `one_of`, `pattern_list`) build the parser of one setting.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeGuard

from ..protocol.auth import decode_secret

Parser = Callable[[object], Any]


@dataclass(frozen=True)
class Address:
    """A TCP endpoint; `host` is bare (no IPv6 brackets), ready for socket calls."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_DURATION_UNITS: dict[str, int | Decimal] = {
    "": 1,
    "ms": Decimal("0.001"),
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
}
_NUMBER_WITH_UNIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE | re.ASCII)
_WHOLE_NUMBER = re.compile(r"\s*\d+\s*", re.ASCII)
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]{1,253}")


def show_value(value: object) -> str:
    """Render a value the way the user wrote it in YAML, so they can find it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> TypeGuard[int]:
    # YAML turns `yes`/`true` into bool, a subclass of int; a count of `true` is a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _number_with_unit(value: object, units: Mapping[str, int | Decimal]) -> Decimal | None:
    """'64GiB' -> 64 * 2**30 as a Decimal, or None when `value` is not of that form."""
    if not isinstance(value, str):
        return None
    match = _NUMBER_WITH_UNIT.fullmatch(value)
    if match is None or match[2].lower() not in units:
        return None
    return Decimal(match[1]) * units[match[2].lower()]


def parse_size(value: object) -> int:
    """Bytes from 4096, '4096', '10MB' or '64GiB' (KB = 1000 bytes, KiB = 1024)."""
    total = Decimal(value) if _is_int(value) else _number_with_unit(value, _SIZE_UNITS)
    if total is None or total < 0 or total != total.to_integral_value():
        raise ValueError(
            f"expected a size like '64GiB', '512MiB', '10MB' or a number of bytes, "
            f"got {show_value(value)}"
        )
    return int(total)


def parse_rate(value: object) -> int:
    """Bytes per second from '40MB', '40MB/s', '500KiB/s' or a number of bytes."""
    text = value.strip().removesuffix("/s") if isinstance(value, str) else value
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError(
            f"expected a rate like '40MB' or '40MB/s' (bytes per second), or null for no "
            f"limit, got {show_value(value)}"
        ) from None


def parse_duration(value: object) -> float:
    """Seconds from 30, 1.5, '30s', '5m', '2h', '7d' or '250ms'."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        number = _number_with_unit(value, _DURATION_UNITS)
        seconds = math.nan if number is None else float(number)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"expected a duration like '30s', '5m', '250ms' or a number of seconds, "
            f"got {show_value(value)}"
        )
    return seconds


def parse_address(value: object, default_host: str, *, listening: bool = False) -> Address:
    """An Address from 'HOST:PORT', '[::1]:PORT', ':PORT', 'PORT' or a bare port number.

    Without a host, `default_host` is used: all interfaces for a listener, this machine for
    a client.  Only a listener may use port 0, which asks the kernel for a free port (tests
    and demos run receivers side by side that way).
    """
    example = "expected HOST:PORT like '192.168.1.50:5000', '[::1]:5000' or ':5000'"
    if _is_int(value):
        host, port = "", str(value)
    elif isinstance(value, str):
        host, port = _split_host_port(value.strip(), example)
    else:
        raise ValueError(f"{example}, got {show_value(value)}")
    lowest = 0 if listening else 1
    if not (port.isascii() and port.isdigit()) or not lowest <= int(port) <= 65535:
        raise ValueError(
            f"expected a port from {lowest} to 65535 after the ':', got {show_value(value)}"
        )
    return Address(host or default_host, int(port))


def _split_host_port(text: str, example: str) -> tuple[str, str]:
    """('host', 'port') from the text; host is '' when only a port was given."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{example}, got {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
        return host, rest[1:]
    if text.count(":") > 1:
        raise ValueError(f"write IPv6 addresses in brackets, like '[::1]:5000', got {text!r}")
    host, colon, port = text.rpartition(":")
    if not colon:
        if not text.isdigit():
            raise ValueError(f"{example}, got {text!r}, which has no port")
        return "", text
    if host:
        _check_host(host, text)
    return host, port


def _check_host(host: str, text: str) -> None:
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"expected a host name or IP address before the ':', got {text!r}")
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv4 address") from None


def parse_int(value: object) -> int:
    """A whole number; `true` is refused although YAML makes it an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value):
        return int(value)  # from the command line, where everything is text
    raise ValueError(f"expected a whole number, got {show_value(value)}")


def parse_name(value: object) -> str:
    """A host or sender name: printable, at most 255 bytes, outer blanks dropped."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"expected a name (quote it if it looks like a number), got {show_value(value)}"
        )
    if not value.isprintable() or len(value.encode()) > 255:
        raise ValueError(f"expected at most 255 bytes of printable text, got {show_value(value)}")
    return value.strip()


def parse_path(value: object) -> Path:
    """A filesystem path, `~` expanded; whether it exists is for its user to find out."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a path, got {show_value(value)}")
    if "\0" in value:
        raise ValueError(f"a path cannot contain a NUL character, got {show_value(value)}")
    return Path(value).expanduser()


def pattern_list(*, allow_empty: bool) -> Parser:
    """A parser of a list of wildcard patterns; `allow_empty` for lists that may match nothing."""

    def parse(value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, str) and item for item in value
        ):
            raise ValueError(
                f"expected a list of wildcard patterns like ['*.npy'], got {show_value(value)}"
            )
        if not value and not allow_empty:
            raise ValueError("expected at least one pattern; with none, nothing would be sent")
        return tuple(value)

    return parse


def one_of(options: tuple[str, ...]) -> Parser:
    """A parser that accepts only `options`, suggesting the closest for a typo."""

    def parse(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise ValueError(
            f"expected one of {', '.join(options)}, got {show_value(value)}"
            + did_you_mean(str(value), options)
        )

    return parse


def in_range(parse: Parser, low: float, high: float | None, unit: str = "") -> Parser:
    """Wrap `parse` so results outside low..high are refused with the allowed range."""

    def number(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    if high is None:
        allowed = f"at least {number(low)}{unit}"
    else:
        allowed = f"from {number(low)}{unit} to {number(high)}{unit}"

    def parse_in_range(value: object) -> Any:
        result = parse(value)
        if result < low or (high is not None and result > high):
            raise ValueError(f"expected {allowed}, got {show_value(value)}")
        return result

    return parse_in_range


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """The hint "; did you mean 'x'?" for the choice closest to a mistyped `word`, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def parse_bool(value: object) -> bool:
    """true or false, from YAML or as text from the command line."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"  # from the command line
    raise ValueError(f"expected true or false, got {show_value(value)}")


def parse_networks(value: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of networks like ['192.168.1.0/24', '10.0.0.7']; a bare address is one host."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError(
            f"expected a list of networks like ['192.168.1.0/24'], got {show_value(value)}"
        )
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is not a network; write it like '192.168.1.0/24' or '10.0.0.7'"
            ) from None
    return tuple(networks)


def parse_secret(value: object) -> str:
    """A sender key as `scanxfer keys add` printed it."""
    if not isinstance(value, str):
        raise ValueError(
            f"expected the key printed by `scanxfer keys add`, got {show_value(value)}"
        )
    try:
        decode_secret(value.strip())
    except ValueError as error:
        raise ValueError(f"{error}; copy it again from `scanxfer keys add`") from None
    return value.strip()


def parse_fingerprint(value: object) -> str:
    """A certificate's SHA-256 as 64 hex digits, colons allowed; kept lower case without colons."""
    text = value.strip().lower().replace(":", "") if isinstance(value, str) else ""
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(
            "expected the receiver certificate's SHA-256 fingerprint, 64 hex digits as "
            f"`scanxfer keys add` prints it, got {show_value(value)}"
        )
    return text
