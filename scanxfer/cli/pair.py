"""`scanxfer pair LINE`, on the sender: check a pairing line against its receiver, then keep it.

The line `scanxfer keys add` printed is tried first with one real handshake (the sender's own
`Session`: TCP, TLS against the line's fingerprint, the proof of the key), so a line copied
wrong, from another receiver or with a revoked key is caught here, with the reason, and not
at the first delivery.  Nothing is written unless the check passes (or --no-check).

No message quotes the line back: it holds the sender's secret key, and what is wrong with it
is said in words instead.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanxfer.config import SenderConfig, default_sender_config_path, load_sender_config

from .common import SENDER_EXITS, ExitCode, UsageError, command

if TYPE_CHECKING:
    from scanxfer.keys.pairing import Pairing

log = logging.getLogger(__name__)

# What the sender's owner can do when the receiver cannot be asked now.
_OFFLINE = "to set this sender up now and check later, run the same command with --no-check"


def add_command(commands: Any) -> None:
    """Register `pair` on the top-level subparsers."""
    sub = command(
        commands,
        "pair",
        _pair,
        SENDER_EXITS,
        help="set this sender up from a line printed by `scanxfer keys add`",
        description="Check the line against its receiver with one handshake (connection, "
        "TLS with the line's certificate fingerprint, proof of the key), then write the "
        "receiver's address, this sender's name and key, and the fingerprint into the "
        "sender's settings file. Other settings and comments in the file are kept. Nothing "
        "is written if the check fails: unreachable (exit 3), another certificate than the "
        "line's (exit 2), or the key refused (exit 1). A file already paired with another "
        "receiver is changed only with --replace.",
        epilog="The settings go to ~/.config/scanxfer/sender.yaml unless -c FILE is given.\n\n"
        "examples:\n"
        "  scanxfer pair 'scanxfer://lab-pc:KEY@192.168.1.50:5000/?fingerprint=...'\n"
        "  scanxfer pair --replace 'scanxfer://lab-pc:KEY@192.168.1.60:5000/?fingerprint=...'",
    )
    sub.add_argument("line", metavar="LINE", help="the whole line `scanxfer keys add` printed")
    sub.add_argument(
        "-c", "--config", type=Path, metavar="FILE", help="sender settings file to write"
    )
    sub.add_argument(
        "--replace",
        action="store_true",
        help="pair with this receiver although the file is paired with another one",
    )
    sub.add_argument(
        "--no-check",
        action="store_true",
        help="write the line without contacting the receiver (offline set-up)",
    )


def _pair(args: argparse.Namespace) -> int:
    from scanxfer.keys import pairing

    try:
        paired = pairing.parse_pairing(args.line)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    path: Path = args.config or default_sender_config_path()
    current = load_sender_config(path) if path.exists() else None
    if not args.replace and (other := _paired_elsewhere(current, paired)):
        raise UsageError(
            f"{path} is paired with {other}; the line is for {_receiver(paired)}. To pair "
            f"with that one instead, run the same command with --replace (the sender then "
            f"delivers to it every scan in the watch folder that it has not had)"
        )
    if not args.no_check and (failure := _check(args, path, paired)) is not None:
        return failure
    try:
        pairing.write_sender_config(path, paired)
    except OSError as exc:
        log.error("cannot write %s: %s; check the path and its permissions", path, exc)
        return ExitCode.FAILED
    _report(args, path, paired, load_sender_config(path))
    return ExitCode.OK


def _paired_elsewhere(current: SenderConfig | None, paired: Pairing) -> str | None:
    """The receiver `current` is paired with and as whom, if it is not the line's; else None.

    With TLS a receiver is its certificate, whatever address reaches it (a Pi that moved is
    the same receiver); without, it is its address.  A new key for the same receiver (after
    `keys add --replace`) is no change of receiver.
    """
    from scanxfer import tls

    if current is None or current.key is None:
        return None
    if current.tls and paired.fingerprint is not None and current.fingerprint is not None:
        same = tls.pin_matches(current.fingerprint, paired.fingerprint)
    else:
        same = current.tls == paired.tls and current.receiver == paired.address
    if same:
        return None
    fingerprint = current.fingerprint if current.tls else None
    return f"{_described(str(current.receiver), fingerprint)} as {current.name}"


def _receiver(paired: Pairing) -> str:
    return _described(str(paired.address), paired.fingerprint)


def _described(address: str, fingerprint: str | None) -> str:
    from scanxfer import tls

    if fingerprint is None:
        return f"receiver {address} (without TLS)"
    return f"receiver {address} (certificate {tls.format_fingerprint(fingerprint)})"


def _check(args: argparse.Namespace, path: Path, paired: Pairing) -> int | None:
    """One handshake with the line's receiver: None if it let this sender in, else the exit
    status (the reason and what to do are logged)."""
    from scanxfer.sender.session import check_pairing
    from scanxfer.sender.transport import (
        AuthenticationFailed,
        CertificateMismatch,
        ConnectionLost,
        KeyRefused,
    )

    overrides = {
        "receiver": str(paired.address),
        "name": paired.name,
        "key": paired.secret,
        "fingerprint": paired.fingerprint,
        "tls": paired.tls,
    }
    config = load_sender_config(path if path.exists() else None, overrides)
    unchanged = f"nothing was written to {path}"
    again = f"sudo scanxfer keys add {shlex.quote(paired.name)} --replace"
    try:
        check_pairing(config)
    except CertificateMismatch as exc:
        log.error(
            "%s presented the certificate %s, not %s of the pairing line: the line comes from "
            "another receiver, or this receiver's identity was made anew (its tls folder "
            "removed, or the receiver reinstalled); %s. On the receiver at %s, run: %s, "
            "and pair with the line it prints",
            f"receiver {paired.address}",
            _shown(exc.presented),
            _shown(exc.pinned),
            unchanged,
            paired.address,
            again,
        )
        return ExitCode.USAGE
    except KeyRefused as exc:
        log.error(
            "receiver %s refused the key of %s (%s): it may have been revoked, or replaced by "
            "a newer one; %s. On the receiver, run: %s, and pair with the line it prints",
            paired.address,
            paired.name,
            exc.reason,
            unchanged,
            again,
        )
        return ExitCode.FAILED
    except AuthenticationFailed as exc:
        log.error("%s; %s", exc, unchanged)
        return ExitCode.FAILED
    except ConnectionLost as exc:
        log.error(
            "%s; %s. Check that the receiver runs (on it: systemctl status "
            "scanxfer-receiver) and that this PC reaches %s (a firewall?), then pair again; "
            "%s",
            exc,
            unchanged,
            paired.address,
            _OFFLINE,
        )
        return ExitCode.UNREACHABLE
    return None


def _shown(fingerprint: str) -> str:
    from scanxfer import tls

    return tls.format_fingerprint(fingerprint)


def _report(args: argparse.Namespace, path: Path, paired: Pairing, config: SenderConfig) -> None:
    security = (
        f"over TLS, trusting only the certificate {_shown(paired.fingerprint)}"
        if paired.fingerprint is not None
        else "without TLS (the receiver has tls: false)"
    )
    checked = (
        "not checked (--no-check): the receiver was not contacted"
        if args.no_check
        else "checked: the receiver let this sender in with this key"
    )
    send = "scanxfer send --once" + (f" -c {shlex.quote(str(path))}" if args.config else "")
    log.info(
        "wrote %s: this sender is %s and delivers to %s %s.\n"
        "%s.\n"
        "it sends the files in %s; edit watch_dir there to change that.\n"
        "next, test it with: %s\n"
        "then run it as a service: scanxfer install-user-unit, then "
        "systemctl --user enable --now scanxfer-sender "
        "(if the service already runs: systemctl --user restart scanxfer-sender)",
        path,
        paired.name,
        paired.address,
        security,
        checked,
        config.watch_dir,
        send,
    )
