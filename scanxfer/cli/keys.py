"""`scanxfer keys add|list|revoke`, on the receiver.

Pairing takes two commands and one copied line: `sudo scanxfer keys add lab-pc` on the Pi
issues a key and prints a line holding it, the receiver's address and its certificate's
fingerprint; `scanxfer pair LINE` on the instrument PC (`cli.pair`) checks it against the
receiver and writes all of it into sender.yaml.

Kept apart from scanxfer.cli, which registers these commands by calling add_commands().
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanxfer.config import (
    RECEIVER_CONFIG_PATH,
    Address,
    ReceiverConfig,
    load_receiver_config,
    parse_address,
)

from .common import TOOL_EXITS, ExitCode, Formatter, UsageError, add_verbosity, command

if TYPE_CHECKING:
    from scanxfer.keys import KeyEntry
    from scanxfer.keys.seen import Sighting

log = logging.getLogger(__name__)


def add_commands(commands: Any) -> None:
    """Register `keys` (with add, list, revoke) on the top-level subparsers."""
    keys = commands.add_parser(
        "keys",
        formatter_class=Formatter,
        help="issue, list and revoke sender keys (on the receiver)",
        description="Manage which senders the receiver accepts. Each sender proves a key of "
        "its own; the receiver stores only what it needs to check it, in keys.json in its "
        "state directory, and picks up changes without a restart. Run these with sudo on "
        "the receiver.",
        epilog="examples:\n"
        "  sudo scanxfer keys add lab-pc\n"
        "  sudo scanxfer keys add lab-pc --address 192.168.1.50 --replace\n"
        "  sudo scanxfer keys list\n"
        "  sudo scanxfer keys revoke lab-pc",
    )
    add_verbosity(keys, default=argparse.SUPPRESS)
    actions = keys.add_subparsers(dest="keys_action", required=True)
    add = command(
        actions,
        "add",
        _keys_add,
        TOOL_EXITS,
        help="issue a key for a sender and print its pairing line",
        description="Issue a key for the sender NAME and print, on standard output, the "
        "line to give to `scanxfer pair` on that sender. The line holds the key: pass it on "
        "privately. Makes the receiver's TLS certificate first if there is none yet.",
        epilog="The address in the line is --address if given; what that leaves out is "
        "worked out. The port is the one the receiver running for this state directory "
        "listens on (else the listen port of the settings); the host is the listen address "
        "if that is not 0.0.0.0 or ::, else "
        "this host's primary address from its interfaces and routes (the one its default "
        "route leaves by; its other addresses are listed), else its host name.\n\n"
        "example:\n  sudo scanxfer keys add lab-pc --address pi.lab.example:5000",
    )
    add.add_argument("name", type=_sender_name, metavar="NAME", help="the sender, e.g. lab-pc")
    add.add_argument(
        "--address",
        metavar="HOST[:PORT]",
        help="how senders reach this receiver (default: worked out as described below)",
    )
    add.add_argument(
        "--replace", action="store_true", help="give NAME a new key; its old key stops working"
    )
    _add_receiver_options(add)
    listing = command(
        actions,
        "list",
        _keys_list,
        TOOL_EXITS,
        help="list the senders' keys and the certificate fingerprint",
        description="List every sender key issued (name, when, active or revoked), when and "
        "from which address the receiver last saw each sender, and the fingerprint of the "
        "receiver's certificate. LAST SEEN is the local time of the sender's last handshake, "
        "or of its connection while it stays connected; a running receiver writes it down "
        "within seconds for a new sender or address, otherwise at most every 5 minutes.",
    )
    _add_receiver_options(listing)
    revoke = command(
        actions,
        "revoke",
        _keys_revoke,
        TOOL_EXITS,
        help="stop accepting a sender's key",
        description="Stop accepting the key of the sender NAME, at once: a running receiver "
        "refuses its next handshake and closes its open connection within a second, without "
        "a restart. The record stays, so the receiver's log can say why it refuses; "
        "`keys add NAME` issues a new key later.",
    )
    revoke.add_argument("name", metavar="NAME", help="the sender to refuse")
    _add_receiver_options(revoke)
    # Named after the choices, so "required" errors list them, as usage lines do.
    actions.metavar = "{" + ",".join(actions.choices) + "}"


def _add_receiver_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"receiver settings to read (default: {RECEIVER_CONFIG_PATH} if it exists)",
    )
    sub.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the receiver's state directory, if not the settings' state_dir",
    )


def _sender_name(text: str) -> str:
    from scanxfer.keys import check_sender_name

    try:
        return check_sender_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- commands --------------------------------------------------------------------------------


def _receiver_config(args: argparse.Namespace) -> ReceiverConfig:
    return load_receiver_config(args.config, {"state_dir": args.state_dir})


def _keys_add(args: argparse.Namespace) -> int:
    config = _receiver_config(args)
    chosen = _pairing_address(args.address, *_bound_address(config))
    address = chosen.address
    from scanxfer import keys, tls
    from scanxfer.keys.pairing import Pairing, format_pairing

    try:
        identity = tls.ensure_identity(config.state_dir, config.name) if config.tls else None
        secret = keys.KeyFile(keys.keys_path(config.state_dir)).add(args.name, replace=args.replace)
    except keys.KeyExists as exc:
        again = _same_receiver(args, f"scanxfer keys add {shlex.quote(args.name)} --replace")
        raise keys.KeysError(
            f"{exc}; to give it a new one (the old one stops working), run: {again}"
        ) from None
    except OSError as exc:
        log.error("cannot change %s: %s", config.state_dir, exc)
        return ExitCode.FAILED
    line = format_pairing(
        Pairing(
            host=address.host,
            port=address.port,
            name=args.name,
            secret=secret,
            fingerprint=None if identity is None else identity.fingerprint,
            tls=identity is not None,
        )
    )
    print(line, flush=True)
    log.info(
        "issued a key for %s; the receiver accepts it from now on.\n"
        "on the sender, run:\n  scanxfer pair '%s'\n"
        "the line holds the key: pass it on privately.\n"
        "address in the line: %s (%s)%s%s\n"
        "if senders reach this receiver another way, issue the key again with "
        "--address HOST[:PORT] --replace",
        args.name,
        line,
        address,
        chosen.source,
        _others(chosen.others),
        "" if identity is None else _fingerprint_line(identity.fingerprint),
    )
    if identity is None:
        log.warning("tls is false in the receiver's settings: files cross the network unencrypted")
    return ExitCode.OK


def _fingerprint_line(fingerprint: str) -> str:
    from scanxfer import tls

    return f"\ncertificate fingerprint (SHA-256) in the line: {tls.format_fingerprint(fingerprint)}"


def _others(addresses: tuple[str, ...]) -> str:
    return f"\nthis host's other addresses: {', '.join(addresses)}" if addresses else ""


def _keys_list(args: argparse.Namespace) -> int:
    config = _receiver_config(args)
    from scanxfer import keys, tls

    entries = keys.KeyFile(keys.keys_path(config.state_dir)).entries()
    if entries:
        _print_key_table(entries, _sightings(config.state_dir))
    else:
        log.info("no sender keys yet; issue one with: sudo scanxfer keys add NAME")
    try:
        identity = tls.load_identity(config.state_dir)
    except tls.TLSSetupError as exc:
        if config.tls:
            log.warning("%s", exc)
    else:
        shown = tls.format_fingerprint(identity.fingerprint)
        if entries:
            print()  # a blank line between the table and the fingerprint
        print(f"certificate fingerprint (SHA-256): {shown}")
    return ExitCode.OK


def _sightings(state_dir: Path) -> dict[str, Sighting]:
    """When the receiver last saw each sender; none, with a warning, if it cannot be read."""
    from scanxfer.keys import seen

    try:
        return seen.read_seen(seen.seen_path(state_dir))
    except seen.SeenError as exc:
        log.warning("%s; LAST SEEN is left blank", exc)
        return {}


def _print_key_table(entries: list[KeyEntry], sightings: dict[str, Sighting]) -> None:
    rows = [
        (
            entry.name,
            entry.created,
            "active" if entry.active else f"revoked {entry.revoked}",
            _last_seen(sightings.get(entry.name)),
        )
        for entry in entries
    ]
    header = ("NAME", "CREATED", "STATUS", "LAST SEEN")
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(3)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]))


def _last_seen(sighting: Sighting | None) -> str:
    """'never', or the local time with its UTC offset and the address it came from."""
    if sighting is None:
        return "never"
    return f"{sighting.at.astimezone():%Y-%m-%d %H:%M:%S %z} from {sighting.address}"


def _keys_revoke(args: argparse.Namespace) -> int:
    config = _receiver_config(args)
    from scanxfer import keys

    revoked_before = keys.KeyFile(keys.keys_path(config.state_dir)).revoke(args.name)
    if revoked_before is not None:
        log.info(
            "the key of %s was already revoked on %s; nothing to do", args.name, revoked_before
        )
        return ExitCode.OK
    log.info(
        "revoked the key of %s: the receiver refuses it and closes its open connection", args.name
    )
    return ExitCode.OK


def _same_receiver(args: argparse.Namespace, command: str) -> str:
    """`command` with the user's own -c and --state-dir, so a hint acts where they did."""
    for option, value in (("-c", args.config), ("--state-dir", args.state_dir)):
        if value is not None:
            command += f" {option} {shlex.quote(str(value))}"
    return command


# --- the address in the pairing line ----------------------------------------------------------


@dataclass(frozen=True)
class _Chosen:
    """The address for the pairing line, where its parts came from, and the host's others."""

    address: Address
    source: str
    others: tuple[str, ...] = ()


def _bound_address(config: ReceiverConfig) -> tuple[Address, str]:
    """The address the receiver listens on, and whose it is ("in the settings", say).

    A receiver running for this state directory knows the port it really bound (--listen
    on the command line, or port 0); the settings are only what it would bind next time.
    """
    from scanxfer.keys.listening import running_receiver

    running = running_receiver(config.state_dir)
    if running is None:
        return config.listen, "in the receiver's settings"
    return running.address, f"of the running receiver (pid {running.pid})"


def _pairing_address(option: str | None, listen: Address, whose: str) -> _Chosen:
    """The address senders should dial, and where it came from (for the user to check).

    Worked out from this host's own configuration only: no packet is sent to find it.
    """
    host, port, port_source = "", listen.port, f"the listen port {whose}"
    if option is not None:
        host, given_port = _address_option(option)
        if given_port is not None:
            port, port_source = given_port, "--address"
    if port == 0:
        raise UsageError(
            f"the receiver listens on port 0 (any free port) {whose}, which senders cannot "
            f"know; give the port: --address HOST:PORT"
        )
    if host:
        return _Chosen(Address(host, port), f"host: --address; port: {port_source}")
    host, host_source, others = _local_host(listen, whose)
    return _Chosen(Address(host, port), f"host: {host_source}; port: {port_source}", others)


def _address_option(text: str) -> tuple[str, int | None]:
    """(host, port) from --address HOST, HOST:PORT, [IPv6]:PORT, [IPv6], IPv6 or :PORT.

    A missing port is None (the listen port); a missing host ('') is worked out later.
    """
    text = text.strip()
    try:
        if text.startswith("[") and text.endswith("]"):
            return str(ipaddress.IPv6Address(text[1:-1])), None
        if text.startswith("[") or text.count(":") == 1 or text.isdigit():
            address = parse_address(text, default_host="")
            return address.host, address.port
        if ":" in text:
            return str(ipaddress.IPv6Address(text)), None
        return parse_address(f"{text}:1", default_host="").host, None
    except ValueError as exc:
        raise UsageError(f"--address {text!r}: {exc}") from None


def _local_host(listen: Address, whose: str) -> tuple[str, str, tuple[str, ...]]:
    """(host, where it came from, this host's other addresses) for a receiver on `listen`."""
    if not _is_wildcard(listen.host):
        return listen.host, f"the listen address {whose}", ()
    from scanxfer.hostaddr import read_host_addresses

    found = read_host_addresses()
    if listen.host == "0.0.0.0":  # IPv4 only; "::" takes IPv6 and IPv4 alike
        found = found.of_version(4)
    if found.primary is None:
        return socket.gethostname(), "this host's name, as it has no address but loopback", ()
    return found.primary, "this host's primary address (interfaces and routes)", found.others


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
