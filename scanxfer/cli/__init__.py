"""The `scanxfer` command: receive, send, status, simulate, verify, install-user-unit, keys, pair,
store-in.

Each subcommand imports its module only when it runs, so a module that fails to import
breaks only its own subcommand, and `scanxfer --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scanxfer import __version__, cipher
from scanxfer.config import (
    RECEIVER_CONFIG_PATH,
    ReceiverConfig,
    SenderConfig,
    load_receiver_config,
    load_sender_config,
    parse_duration,
)
from scanxfer.errors import ScanxferError, describe_exit_codes
from scanxfer.systemd import setup_logging

from . import keys as keys_commands
from . import pair as pair_command
from . import storage as storage_commands
from .common import (
    REPORT_EXITS,
    SENDER_EXITS,
    SERVICE_EXITS,
    TOOL_EXITS,
    ExitCode,
    Formatter,
    UsageError,
    add_verbosity,
    command,
)

log = logging.getLogger(__name__)

_EPILOG = (
    describe_exit_codes() + "\n\nRun 'scanxfer COMMAND --help' for the options of a command "
    "and the statuses it ends with."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has reported
        return int(exc.code or 0)
    setup_logging(args.verbose - args.quiet)
    # Only a command started from its own command line can start itself again (`receive`,
    # for OpenSSL's configuration); one called with `argv` runs inside another program.
    args.whole_command_line = argv is None
    try:
        return args.run(args)
    except UsageError as exc:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ScanxferError as exc:
        # Every error a user can act on ends here, once; its message says what to do.
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; separate from main() so tests can inspect parsed options."""
    parser = argparse.ArgumentParser(
        prog="scanxfer",
        description="Move .npy scan files from an instrument PC to a Raspberry Pi over TCP: "
        "checksummed, resumable, and stored durably before they are acknowledged.",
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_verbosity(parser, default=0)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_receive(commands)
    _add_send(commands)
    _add_status(commands)
    _add_simulate(commands)
    _add_verify(commands)
    _add_install_user_unit(commands)
    keys_commands.add_commands(commands)
    pair_command.add_command(commands)
    storage_commands.add_commands(commands)
    return parser


def _add_receive(commands: Any) -> None:
    sub = command(
        commands,
        "receive",
        _receive,
        SERVICE_EXITS,
        help="accept files from senders and store them",
        description="Accept files from senders, check each against its checksum, and store it "
        "durably under the incoming directory. Runs until stopped; the scanxfer-receiver "
        "service runs this.",
        epilog=f"Settings are read from {RECEIVER_CONFIG_PATH} when it exists (or from -c FILE); "
        "the options below override them.\n\n"
        "example:\n  scanxfer receive --listen :5000 --dir ./data/incoming --state-dir ./data",
    )
    sub.add_argument("-c", "--config", type=Path, metavar="FILE", help="settings file to read")
    sub.add_argument(
        "--listen", metavar="HOST:PORT", help="address to accept senders on, e.g. 0.0.0.0:5000"
    )
    sub.add_argument("--dir", type=Path, metavar="DIR", help="where completed files appear")
    sub.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="where the receiver keeps its state"
    )
    sub.add_argument(
        "--check",
        action="store_true",
        help="only check the settings and exit: 0 if they are valid (`systemctl reload` runs "
        "this first, so a broken file makes the reload fail instead of being ignored)",
    )


def _add_send(commands: Any) -> None:
    sub = command(
        commands,
        "send",
        _send,
        SENDER_EXITS,
        help="watch a directory and deliver completed files",
        description="Watch a directory and deliver every completed file to the receiver exactly "
        "once, reconnecting and resuming after failures. Runs until stopped unless --once "
        "is given; the scanxfer-sender user service runs this.",
        epilog="Settings are read from ~/.config/scanxfer/sender.yaml when it exists (or from "
        "-c FILE); the options below override them.\n\n"
        "Ctrl-C or SIGTERM stops it within a second, in the middle of a file too: the receiver "
        "keeps what it has, and the next run resumes there. A second Ctrl-C quits at once.\n\n"
        "examples:\n  scanxfer send --to 192.168.1.50:5000 --watch ./scans\n"
        "  scanxfer send --once --resend 'run7/*'",
    )
    sub.add_argument("-c", "--config", type=Path, metavar="FILE", help="settings file to read")
    sub.add_argument(
        "--to", metavar="HOST:PORT", help="the receiver's address, e.g. 192.168.1.50:5000"
    )
    sub.add_argument("--watch", type=Path, metavar="DIR", help="directory to send files from")
    sub.add_argument(
        "--once",
        action="store_true",
        help="send what is there now, wait for the receiver to confirm it, then exit",
    )
    sub.add_argument(
        "--max-rate",
        metavar="RATE",
        help="send at most this many bytes per second, e.g. 40MB or 500KiB (max_rate)",
    )
    sub.add_argument(
        "--legacy",
        action="store_true",
        help="send to an old prototype receiver (8-byte length, then the file; one connection "
        "per file) during a migration: no key, no TLS, no checksum. The prototype sends no "
        "acknowledgement, so a file counts as delivered once the receiver closes the "
        "connection after reading it, which is the best confirmation there is; a file whose "
        "connection ends otherwise is sent again and may arrive twice",
    )
    sub.add_argument(
        "--resend",
        action="append",
        default=[],
        metavar="GLOB",
        help="send again the files whose path relative to the watch directory matches GLOB, "
        "even though the journal says they were delivered (or refused) to this receiver, "
        "e.g. after files were lost on it. A shell wildcard in which * also matches /: "
        "'run7/*', 'scan_0001*.npy', '*' for everything; repeat for more. A receiver that "
        "still holds identical bytes answers that it has them and stores no second copy",
    )


def _add_status(commands: Any) -> None:
    sub = command(
        commands,
        "status",
        _status,
        REPORT_EXITS,
        help="show whether the sender runs, its connection, backlog and failures",
        description="Show whether the sender is running (from the status file the running "
        "sender keeps in its state directory), whether it is connected or retrying since when "
        "and why, the file it is sending, what it has waiting (files that still exist: count, "
        "bytes, age of the oldest), what it delivered last and at what rate, which files it "
        "gave up on and why, and which .npy files in the watch directory are incomplete and "
        "will not be sent. Times are local, with their UTC offset. Safe while the sender runs.",
        epilog="Reads the same settings as 'scanxfer send' (~/.config/scanxfer/sender.yaml or "
        "-c FILE). The --json output is a stable schema, described field by field in "
        "docs/status.md.\n\nexample:\n  scanxfer status --json",
    )
    sub.add_argument("-c", "--config", type=Path, metavar="FILE", help="settings file to read")
    sub.add_argument("--watch", type=Path, metavar="DIR", help="the directory the sender watches")
    sub.add_argument("--json", action="store_true", help="print JSON, for scripts")


def _add_simulate(commands: Any) -> None:
    sub = command(
        commands,
        "simulate",
        _simulate,
        REPORT_EXITS,
        help="write synthetic .npy scans, like an instrument",
        description="Write synthetic .npy scan files into a directory like an instrument: one "
        "every --interval, each in --chunks writes. Use it to try a sender without an "
        "instrument.",
        epilog="example:\n  scanxfer simulate --dir ./scans --count 100 --interval 250ms "
        "--shape 1024x1024 --dtype float32",
    )
    sub.add_argument(
        "--dir", type=Path, default=Path("scans"), metavar="DIR", help="where to write (./scans)"
    )
    sub.add_argument(
        "--count", type=_positive_int, default=10, metavar="N", help="files to write (10)"
    )
    sub.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="pause between files: seconds or a duration like 250ms (1s)",
    )
    sub.add_argument(
        "--shape", type=_shape, default=(512, 512), metavar="AxB", help="array shape (512x512)"
    )
    sub.add_argument("--dtype", type=_dtype, default="uint16", help="NumPy element type (uint16)")
    sub.add_argument(
        "--chunks", type=_positive_int, default=4, metavar="N", help="writes per file (4)"
    )


def _add_verify(commands: Any) -> None:
    sub = command(
        commands,
        "verify",
        _verify,
        TOOL_EXITS,
        help="check that received files match the originals",
        description="Check that received files match the originals: size, checksum and, for "
        ".npy files, the arrays. Compares two files, two directory trees, or (with no "
        "arguments) the newest file in ./scans with the newest in ./data/incoming.",
        epilog="examples:\n"
        "  scanxfer verify scans/scan_1.npy data/incoming/scan_1.npy\n"
        "  scanxfer verify --source ./scans --dest /var/lib/scanxfer/incoming\n"
        "  scanxfer verify --scans ./scans --incoming ./data/incoming",
    )
    sub.add_argument("files", nargs="*", type=Path, metavar="FILE", help="two files to compare")
    sub.add_argument("--source", type=Path, metavar="DIR", help="tree of original files")
    sub.add_argument("--dest", type=Path, metavar="DIR", help="tree of received files")
    sub.add_argument(
        "--scans", type=Path, metavar="DIR", help="newest original from here (./scans)"
    )
    sub.add_argument(
        "--incoming",
        type=Path,
        metavar="DIR",
        help="newest received file from here (./data/incoming)",
    )


def _add_install_user_unit(commands: Any) -> None:
    sub = command(
        commands,
        "install-user-unit",
        _install_user_unit,
        TOOL_EXITS,
        help="set the sender up as a systemd user service",
        description="Install the scanxfer-sender systemd user unit for the current user, running "
        "this very scanxfer (useful after a pip or pipx install), and with --to or --watch "
        "write the sender's settings file. Then start it with: "
        "systemctl --user enable --now scanxfer-sender",
        epilog="The unit goes to ~/.config/systemd/user/scanxfer-sender.service, the settings "
        "to ~/.config/scanxfer/sender.yaml (an existing settings file is never overwritten).\n\n"
        "example:\n  scanxfer install-user-unit --to 192.168.1.50:5000 --watch ~/scans",
    )
    sub.add_argument(
        "--to", metavar="HOST:PORT", help="the receiver's address, written to the settings"
    )
    sub.add_argument(
        "--watch", type=Path, metavar="DIR", help="directory to send from, written to the settings"
    )


# --- argument types: raise ArgumentTypeError so argparse prints our message, exit 2 ---------


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shape(text: str) -> tuple[int, ...]:
    parts = text.lower().split("x")
    if not all(part.isascii() and part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(
            f"expected positive whole numbers joined by 'x', like 512x512, 100 or 4x4x4, "
            f"got {text!r}"
        )
    return tuple(int(part) for part in parts)


def _dtype(text: str) -> str:
    try:
        import numpy
    except ImportError:
        # argparse checks the default too; without numpy, `simulate` itself says what to
        # install, in one line, instead of a traceback from here.
        return text
    try:
        dtype = numpy.dtype(text)
    except TypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a NumPy dtype; try uint16, int32 or float32"
        ) from None
    if dtype.hasobject:
        raise argparse.ArgumentTypeError(
            f"{text!r} holds Python objects, which .npy files can only store by pickling; "
            f"choose a numeric dtype such as uint16"
        )
    if dtype.itemsize == 0:
        raise argparse.ArgumentTypeError(f"{text!r} has no size; give one, like S8 or U4")
    return text


# --- subcommands ---------------------------------------------------------------------------


def receiver_config(args: argparse.Namespace) -> ReceiverConfig:
    overrides = {"listen": args.listen, "incoming_dir": args.dir, "state_dir": args.state_dir}
    return load_receiver_config(args.config, overrides)


def sender_config(args: argparse.Namespace) -> SenderConfig:
    overrides = {"receiver": args.to, "watch_dir": args.watch, "max_rate": args.max_rate}
    return load_sender_config(args.config, overrides)


def _receive(args: argparse.Namespace) -> int:
    config = receiver_config(args)
    from scanxfer import receiver

    if args.check:
        folders = receiver.check_storage(config)
        log.info("settings are valid, and files can be stored in %s", folders.incoming)
        return ExitCode.OK
    if config.tls and args.whole_command_line:
        # May start this command again, once, for OpenSSL to read its configuration.
        cipher.follow(cipher.choose(config.tls_cipher, cipher.read_cpuinfo()))

    # SIGHUP re-reads the same file with the same command-line overrides.
    return receiver.serve(config, reload=lambda: receiver_config(args))


def _send(args: argparse.Namespace) -> int:
    if any(not pattern.strip() for pattern in args.resend):
        raise UsageError("--resend needs a wildcard, e.g. --resend 'run7/*'")
    config = sender_config(args)
    from scanxfer import sender

    transport = "prototype" if args.legacy else "scanxfer"
    # SIGHUP re-reads the same file with the same command-line overrides.
    return sender.run(
        config,
        once=args.once,
        reload=lambda: sender_config(args),
        transport=transport,
        resend=args.resend,
    )


def _status(args: argparse.Namespace) -> int:
    config = load_sender_config(args.config, {"watch_dir": args.watch})
    from scanxfer.sender import status

    return status.print_status(config, as_json=args.json, out=sys.stdout)


def _simulate(args: argparse.Namespace) -> int:
    from scanxfer import simulate

    written = simulate.run(
        directory=args.dir,
        count=args.count,
        interval=args.interval,
        shape=args.shape,
        dtype=args.dtype,
        chunks=args.chunks,
    )
    log.info("wrote %d file(s) into %s", len(written), args.dir)
    return ExitCode.OK


def _verify(args: argparse.Namespace) -> int:
    pair = args.source is not None or args.dest is not None
    latest = args.scans is not None or args.incoming is not None
    if args.files and len(args.files) != 2:
        raise UsageError(f"give two files to compare, not {len(args.files)}")
    if pair and (args.source is None or args.dest is None):
        raise UsageError("--source and --dest go together")
    if bool(args.files) + pair + latest > 1:
        raise UsageError("choose one: two files, --source with --dest, or --scans/--incoming")
    from scanxfer import verify

    if args.files:
        return verify.verify_pair(a=args.files[0], b=args.files[1], out=sys.stdout)
    if pair:
        return verify.verify_trees(source=args.source, dest=args.dest, out=sys.stdout)
    return verify.verify_latest(
        scans=args.scans or Path("scans"),
        incoming=args.incoming or Path("data/incoming"),
        out=sys.stdout,
    )


def _install_user_unit(args: argparse.Namespace) -> int:
    import getpass

    from scanxfer import user_unit

    try:
        user_unit.install(sys.executable, receiver=args.to, watch_dir=args.watch)
    except OSError as exc:
        log.error("%s", exc)
        return ExitCode.FAILED
    log.info(
        "start it now and at every login with: systemctl --user enable --now %s\n"
        "keep it running while you are logged out with: loginctl enable-linger %s",
        user_unit.UNIT_NAME.removesuffix(".service"),
        getpass.getuser(),
    )
    return ExitCode.OK
