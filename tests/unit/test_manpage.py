"""debian/manpage.py: the man page lists every command and option the parser has."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import scanxfer
from scanxfer.cli import build_parser

GENERATOR = Path(scanxfer.__file__).parents[1] / "debian" / "manpage.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("manpage", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_and_option_is_in_the_page() -> None:
    parser = build_parser()
    page = _generator().page(parser)

    assert page.startswith(".TH SCANXFER 1 ")
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        assert "\n.SS " + name.replace("-", "\\-") + "\n" in page
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help", "-v", "--verbose", "-q", "--quiet"):
                    assert "\\fB" + option.replace("-", "\\-") + "\\fR" in page, (name, option)


def test_roff_escapes_what_roff_would_interpret() -> None:
    roff = _generator().roff
    assert roff("a-b") == "a\\-b"
    assert roff("C:\\path") == "C:\\epath"
    assert roff(".hidden\n'quoted") == "\\&.hidden\n\\&'quoted"
