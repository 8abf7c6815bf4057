"""Write the scanxfer(1) man page, in roff, from the argparse parser of `scanxfer`.

Generated at package build time (debian/rules) so that the page always lists the commands and
options the packaged code has; the parts argparse does not know (files, units) are added here.
Run from the source tree: `PYTHONPATH=. python3 debian/manpage.py > scanxfer.1`.
"""

from __future__ import annotations

import argparse
import sys

from scanxfer import __version__
from scanxfer.cli import build_parser

_TRAILER = r"""
.SH FILES
.TP
.I /etc/scanxfer/receiver.yaml
Receiver settings, read by
.B scanxfer receive
and reloaded on SIGHUP
.RB ( "systemctl reload scanxfer\-receiver" ).
Keys left out keep their defaults.
.TP
.I /var/lib/scanxfer/incoming
Where the receiver service stores completed files, under the sender's relative path.
.TP
.I /var/lib/scanxfer/incoming/.scanxfer\-partial
Files still arriving; an interrupted transfer resumes from here.
It lies inside the incoming folder, so on its disk
.RB ( "scanxfer store\-in"
moves both).
.TP
.I /var/lib/scanxfer/keys.json
The senders' keys, kept as verifiers only: a copy of this file lets nobody send.
Changed by
.BR "scanxfer keys" ;
the receiver follows changes without a restart.
.TP
.I /var/lib/scanxfer/tls/
The receiver's TLS key and self\-signed certificate, made on its first start.
Senders pin the certificate's fingerprint, so deleting this directory means pairing every
sender again.
.TP
.I ~/.config/scanxfer/sender.yaml
Sender settings, read by
.B scanxfer send
and
.BR "scanxfer status" ,
written by
.BR "scanxfer pair" .
It holds the sender's key: keep it private.
.TP
.I ~/.local/state/scanxfer/
The sender's record of what it has delivered.
.SH SYSTEMD
The receiver runs as the system service
.BR scanxfer\-receiver.service ,
as the user
.BR scanxfer :
.RS
.nf
systemctl enable \-\-now scanxfer\-receiver
systemctl status scanxfer\-receiver
journalctl \-u scanxfer\-receiver \-f
.fi
.RE
.PP
The sender runs as the user service
.BR scanxfer\-sender.service :
.RS
.nf
systemctl \-\-user enable \-\-now scanxfer\-sender
journalctl \-\-user \-u scanxfer\-sender \-f
.fi
.RE
.PP
Both report readiness and a status line to systemd and log with syslog priorities, so
.B journalctl \-p warning
shows only problems; systemd restarts a receiver whose main loop stops answering its watchdog.
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1)
"""


def roff(text: str) -> str:
    """Escape text so roff prints it as written: backslashes, hyphens, leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def paragraphs(text: str | None) -> str:
    """Help text as roff: blank-line-separated blocks, indented ones (examples) kept verbatim."""
    out = []
    for block in (text or "").split("\n\n"):
        lines = block.splitlines()
        if not lines:
            continue
        if any(line.startswith("  ") for line in lines):
            head = [line for line in lines if not line.startswith("  ")]
            body = [line.strip() for line in lines if line.startswith("  ")]
            out.append(".PP\n" + roff(" ".join(head)) if head else ".PP")
            out.append(".RS\n.nf\n" + roff("\n".join(body)) + "\n.fi\n.RE")
        else:
            out.append(".PP\n" + roff(" ".join(line.strip() for line in lines)))
    return "\n".join(out)


def options(parser: argparse.ArgumentParser, *, common: bool) -> str:
    """One .TP entry per option and positional argument, except --help.

    A command's copies of the options every command takes (default SUPPRESS, such as -v)
    are left out unless `common`: they are listed once, under OPTIONS.
    """
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS or (not common and action.default == argparse.SUPPRESS):
            continue
        metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else None)
        if action.option_strings:
            names = ", ".join(f"\\fB{roff(name)}\\fR" for name in action.option_strings)
            label = f"{names} \\fI{roff(str(metavar))}\\fR" if metavar else names
        else:
            label = f"\\fI{roff(str(metavar))}\\fR"
        out.append(f".TP\n{label}\n{roff(action.help or '')}")
    return "\n".join(out)


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def sections(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command under `parser`, each followed by its own subcommands, depth first.

    A nested command is named by its whole path ("keys add"), so it gets a section of its
    own: its options would otherwise be missing from the page, as the parent lists none.
    """
    found = []
    for name, sub in subcommands(parser):
        found.append((name, sub))
        found += [(f"{name} {inner}", nested) for inner, nested in sections(sub)]
    return found


def page(parser: argparse.ArgumentParser) -> str:
    commands = subcommands(parser)
    parts = [
        f'.TH SCANXFER 1 "" "scanxfer {__version__}" "User Commands"',
        ".SH NAME",
        "scanxfer \\- move scan files from an instrument PC to a receiver, checksummed and durably",
        ".SH SYNOPSIS",
        f".B scanxfer\n[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]\n.br\n"
        f"\\fICOMMAND\\fR is one of: {', '.join(name for name, _ in commands)}",
        ".SH DESCRIPTION",
        paragraphs(parser.description),
        ".SH OPTIONS",
        options(parser, common=True),
        ".SH COMMANDS",
    ]
    for name, sub in sections(parser):
        parts += [
            f".SS {roff(name)}",
            ".PP\n" + roff(" ".join(sub.format_usage().removeprefix("usage: ").split())),
            paragraphs(sub.description),
            options(sub, common=False),
            paragraphs(sub.epilog),
        ]
    parts += [".SH EXIT STATUS", paragraphs(parser.epilog), _TRAILER.strip()]
    return "\n".join(part for part in parts if part) + "\n"


def main() -> int:
    sys.stdout.write(page(build_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
