"""debian/manpage.py: the man page lists every command and option the parser has."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Iterator
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


COMMON_OPTIONS = ("-h", "--help", "-v", "--verbose", "-q", "--quiet")


def _commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command the parser has, nested ones ("keys add") included, by its full name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + name, sub
                yield from _commands(sub, f"{prefix}{name} ")


def _sections(page: str) -> dict[str, str]:
    """The text of each .SS section, by its heading as the reader sees it."""
    chunks = page.split("\n.SS ")[1:]
    return {
        chunk.split("\n", 1)[0].replace("\\-", "-"): chunk.split("\n.SH ", 1)[0] for chunk in chunks
    }


def test_every_command_and_option_is_in_its_own_section() -> None:
    parser = build_parser()
    page = _generator().page(parser)
    sections = _sections(page)

    assert page.startswith(".TH SCANXFER 1 ")
    commands = dict(_commands(parser))
    assert {"keys add", "keys list", "keys revoke"} <= commands.keys()  # nesting is reached
    assert list(sections) == list(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            for option in action.option_strings:
                if option not in COMMON_OPTIONS:
                    entry = "\\fB" + option.replace("-", "\\-") + "\\fR"
                    assert entry in sections[name], (name, option)


def test_a_nested_command_has_its_usage_and_arguments_under_its_own_heading() -> None:
    sections = _sections(_generator().page(build_parser()))

    add = sections["keys add"]
    assert "scanxfer keys add " in add.replace("\\-", "-")
    assert "\\fINAME\\fR" in add and "\\fB\\-\\-replace\\fR" in add
    # The parent keeps its description and examples, without its children's options.
    assert "\\-\\-replace" not in sections["keys"].split("examples:")[0]


def test_roff_escapes_what_roff_would_interpret() -> None:
    roff = _generator().roff
    assert roff("a-b") == "a\\-b"
    assert roff("C:\\path") == "C:\\epath"
    assert roff(".hidden\n'quoted") == "\\&.hidden\n\\&'quoted"
