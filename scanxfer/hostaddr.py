"""This host's own addresses, from its interfaces and routes: what a pairing line offers senders.

Name resolution is no guide here: on a Pi (and in Debian's default /etc/hosts) the host name
resolves to 127.0.1.1, so a lookup says "loopback only" while eth0 has an address.  So the
kernel is asked directly, through what even a minimal container has (no `ip` command):

- /proc/net/fib_trie lists every local IPv4 address ("/32 host LOCAL" leaves);
- /proc/net/if_inet6 lists every IPv6 address with its scope and flags;
- connect() on a UDP socket makes the kernel pick the source address of the route to a
  far address (the default route), without sending a packet: that one is the primary.

`read_host_addresses` gathers those inputs; `host_addresses` is the pure part, which tests
drive with inputs of their own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

FIB_TRIE = Path("/proc/net/fib_trie")
IF_INET6 = Path("/proc/net/if_inet6")
# Documentation addresses (RFC 5737, RFC 3849): far away, reached by the default route, and
# never sent anything, as a UDP connect() only looks the route up.
_FAR_AWAY = {socket.AF_INET: "198.51.100.1", socket.AF_INET6: "2001:db8::1"}
# if_inet6 flags of addresses a sender should not be given: temporary (privacy addresses
# change daily), duplicate-address detection failed, deprecated, tentative.
_UNSTABLE_FLAGS = 0x01 | 0x08 | 0x20 | 0x40
_GLOBAL_SCOPE = 0x00


@dataclass(frozen=True)
class HostAddresses:
    """The address to offer senders (None if there is none) and every other candidate."""

    primary: str | None
    others: tuple[str, ...]

    def of_version(self, version: int) -> HostAddresses:
        """Only the addresses of IP `version`: a receiver on 0.0.0.0 is not reached over IPv6."""
        kept = [
            address
            for address in (self.primary, *self.others)
            if address is not None and ipaddress.ip_address(address).version == version
        ]
        return HostAddresses(kept[0] if kept else None, tuple(kept[1:]))


@dataclass(frozen=True)
class Inputs:
    """What the kernel says, as text and addresses: the contents of the two /proc files, and
    the source addresses it picks for the default routes (IPv4 first; None when no route)."""

    fib_trie: str
    if_inet6: str
    routed: tuple[str | None, ...]


def read_host_addresses() -> HostAddresses:
    """This host's addresses, read from the running kernel."""
    return host_addresses(
        Inputs(
            fib_trie=_read(FIB_TRIE),
            if_inet6=_read(IF_INET6),
            routed=tuple(_route_source(family) for family in _FAR_AWAY),
        )
    )


def host_addresses(inputs: Inputs) -> HostAddresses:
    """The candidates in `inputs`: IPv4 before IPv6; the default route's source is primary.

    Without a default route the first candidate is primary, as on a lab network with no
    gateway the host's one LAN address is the address to use.
    """
    candidates = list(
        dict.fromkeys([*ipv4_addresses(inputs.fib_trie), *ipv6_addresses(inputs.if_inet6)])
    )
    routed = [address for address in inputs.routed if address in candidates]
    primary = routed[0] if routed else (candidates[0] if candidates else None)
    return HostAddresses(primary, tuple(a for a in candidates if a != primary))


def ipv4_addresses(fib_trie: str) -> list[str]:
    """The local IPv4 addresses in /proc/net/fib_trie text that a sender could dial.

    A leaf line `|-- ADDRESS` followed by `/32 host LOCAL` is an address of an interface;
    the file repeats them under each routing table, so duplicates are dropped.
    """
    found: list[str] = []
    leaf = None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            leaf = text[4:]
        elif text.startswith("/32 host LOCAL") and leaf and _dialable(leaf) and leaf not in found:
            found.append(leaf)
    return found


def ipv6_addresses(if_inet6: str) -> list[str]:
    """The stable global IPv6 addresses in /proc/net/if_inet6 text.

    Each line is: 32 hex digits, interface index, prefix length, scope, flags, name (hex
    numbers).  Link-local addresses would need the interface named by the sender, and
    temporary or tentative ones may be gone tomorrow.
    """
    found: list[str] = []
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) != 6:
            continue
        try:
            raw, scope, flags = bytes.fromhex(fields[0]), int(fields[3], 16), int(fields[4], 16)
            address = str(ipaddress.IPv6Address(raw))
        except ValueError:
            continue
        if scope == _GLOBAL_SCOPE and not flags & _UNSTABLE_FLAGS and _dialable(address):
            found.append(address)
    return found


def _dialable(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
    )


def _read(path: Path) -> str:
    """The file's text, or "" where it does not exist (no IPv6, /proc not mounted)."""
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def _route_source(family: socket.AddressFamily) -> str | None:
    """The source address the kernel picks for the default route of `family`; None if none."""
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((_FAR_AWAY[family], 9))
        return str(probe.getsockname()[0])
    return None
