"""What every `scanxfer` subcommand shares: exit codes, usage errors, help layout, -v/-q."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import Any

from ..errors import ExitCode, UsageError, describe_exit_codes

__all__ = [
    "REPORT_EXITS",
    "SENDER_EXITS",
    "SERVICE_EXITS",
    "TOOL_EXITS",
    "ExitCode",
    "Formatter",
    "UsageError",
    "add_verbosity",
    "command",
]

# What each kind of command can end with.  A long-running service stops on its own signal
# handlers (exit 0); the short commands let Ctrl-C through, and `main` reports 130.  `send`
# is both: watching, SIGTERM or Ctrl-C is a clean stop (0); with --once, or at a second
# Ctrl-C, it is an interruption (130).
SERVICE_EXITS = (ExitCode.OK, ExitCode.USAGE, ExitCode.UNREACHABLE, ExitCode.STORAGE)
SENDER_EXITS = (
    ExitCode.OK,
    ExitCode.FAILED,
    ExitCode.USAGE,
    ExitCode.UNREACHABLE,
    ExitCode.INTERRUPTED,
)
TOOL_EXITS = (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.INTERRUPTED)
REPORT_EXITS = (ExitCode.OK, ExitCode.USAGE, ExitCode.INTERRUPTED)


class Formatter(argparse.HelpFormatter):
    """Wraps one-line paragraphs to the terminal; keeps multi-line ones (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            textwrap.indent(block, indent)
            if "\n" in block
            else textwrap.fill(block, width, initial_indent=indent, subsequent_indent=indent)
            for block in text.split("\n\n")
        )


def add_verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    # Accepted before and after the command; the subcommand's copies default to SUPPRESS so
    # they do not overwrite a value given before the command.
    parser.add_argument(
        "-v", "--verbose", action="count", default=default, help="more detail (debug messages)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="only warnings and errors"
    )


def command(
    commands: Any,
    name: str,
    run: Callable[[argparse.Namespace], int],
    exits: tuple[ExitCode, ...],
    **texts: str,
) -> argparse.ArgumentParser:
    """Add subcommand `name`; its `--help` ends with the exit statuses `run` can return."""
    epilog = "\n\n".join(filter(None, (texts.pop("epilog", ""), describe_exit_codes(exits))))
    sub: argparse.ArgumentParser = commands.add_parser(
        name, formatter_class=Formatter, epilog=epilog, **texts
    )
    add_verbosity(sub, default=argparse.SUPPRESS)
    sub.set_defaults(run=run, parser=sub)
    return sub
