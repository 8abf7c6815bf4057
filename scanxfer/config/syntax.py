"""A YAML syntax error in plain words, on the line where the break is.

PyYAML reports where its scanner or parser gave up.  For an unclosed quote, an unclosed
bracket or a line without ':' that is the next key, the next quote or the end of the file,
often several lines after the break (a lab admin was sent to line 44 for a quote left open
on line 40), and it says so in its own vocabulary ("expected <block end>, but found
'<scalar>'").  The person reading the message is editing /etc/scanxfer/receiver.yaml over
ssh, so this names the line to change and what to change there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import yaml

__all__ = ["SyntaxProblem", "explain"]

_GENERIC_HINT = "check the indentation, and quote values that contain ': ' or ' #'"


@dataclass(frozen=True)
class SyntaxProblem:
    """What to tell the user: the line to look at (1-based; None if unknown) and why."""

    line: int | None
    text: str


def explain(error: yaml.MarkedYAMLError, text: str) -> SyntaxProblem:
    """The line of the break in `text` (the file's content) and what to do about it."""
    for explainer in _EXPLAINERS:
        problem = explainer(error, text)
        if problem is not None:
            return problem
    mark = error.problem_mark or error.context_mark
    what = error.problem or error.context or "cannot parse"
    return SyntaxProblem(_line(mark), f"{what}; {_GENERIC_HINT}")


def _line(mark: yaml.Mark | None) -> int | None:
    return None if mark is None else mark.line + 1


def _char_at(text: str, mark: yaml.Mark) -> str:
    lines = text.splitlines()
    return lines[mark.line][mark.column] if mark.line < len(lines) else ""


def _unclosed_quote(error: yaml.MarkedYAMLError, text: str) -> SyntaxProblem | None:
    # The scanner ran to the end of the file looking for the closing quote; the context
    # mark is where the quoted value began.
    mark = error.context_mark
    if error.context != "while scanning a quoted scalar" or mark is None:
        return None
    if error.problem != "found unexpected end of stream":
        return None
    quote = _char_at(text, mark)
    return SyntaxProblem(
        _line(mark),
        f"the quote opened on line {mark.line + 1} is never closed; "
        f"end the value with {quote} on that line",
    )


def _runaway_quote(error: yaml.MarkedYAMLError, text: str) -> SyntaxProblem | None:
    """A quote left open that the next quote, lines later, closed: the parser then fails
    on the text after that second quote.  A settings value never spans lines, so a quoted
    value that does, ending on the failing line, is the break."""
    failed = error.problem_mark
    if failed is None:
        return None
    opened = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if _spans_lines_to(token, failed.line):
                opened = token.start_mark
    except yaml.YAMLError:
        pass  # the tokens up to the break are the ones that matter
    if opened is None:
        return None
    quote = _char_at(text, opened)
    return SyntaxProblem(
        _line(opened),
        f"the quote opened on line {opened.line + 1} is not closed on that line, so the value "
        f"runs on to the next {quote} on line {failed.line + 1}; end the value with {quote} "
        f"on line {opened.line + 1}",
    )


def _spans_lines_to(token: yaml.Token, line: int) -> bool:
    return (
        isinstance(token, yaml.ScalarToken)
        and token.style in ("'", '"')
        and token.start_mark.line < token.end_mark.line == line
    )


def _missing_colon(error: yaml.MarkedYAMLError, _text: str) -> SyntaxProblem | None:
    # The scanner looks for the ':' of a key up to the next line; the context mark is the
    # line that lacks it.
    if error.context != "while scanning a simple key" or error.context_mark is None:
        return None
    return SyntaxProblem(
        _line(error.context_mark),
        "this line has no ': ' after its key; write 'key: value', with a space after the ':'",
    )


def _bad_character(error: yaml.MarkedYAMLError, _text: str) -> SyntaxProblem | None:
    problem = error.problem or ""
    if not problem.endswith("that cannot start any token"):
        return None
    if "'\\t'" in problem:
        what = (
            "a tab, which YAML does not accept for indentation or between a key and its "
            "value; use spaces instead"
        )
    else:
        character = problem.removeprefix("found character ").partition(" ")[0]
        what = f"a value cannot start with {character}; put the value in quotes"
    return SyntaxProblem(_line(error.problem_mark), what)


def _bad_escape(error: yaml.MarkedYAMLError, _text: str) -> SyntaxProblem | None:
    problem = error.problem or ""
    if not problem.startswith("found unknown escape character"):
        return None
    return SyntaxProblem(
        _line(error.problem_mark),
        "in a value in double quotes a backslash starts an escape such as \\n; write \\\\ "
        "for a backslash, or use single quotes",
    )


def _undefined_alias(error: yaml.MarkedYAMLError, _text: str) -> SyntaxProblem | None:
    if not (error.problem or "").startswith("found undefined alias"):
        return None
    return SyntaxProblem(
        _line(error.problem_mark),
        "a value cannot start with '*' (YAML reads it as an alias); put the value in quotes",
    )


def _stray_colon(error: yaml.MarkedYAMLError, text: str) -> SyntaxProblem | None:
    mark = error.problem_mark
    if error.problem != "mapping values are not allowed here" or mark is None:
        return None
    line = text.splitlines()[mark.line]
    # Its first ':' on an indented line: the key itself sits too deep (YAML took it for the
    # rest of the value above).  Any other ':' is one too many in a value.
    if line[:1].isspace() and line.find(":") == mark.column:
        what = "this line is indented more than the key above it; start each key in the same column"
    else:
        what = "a second ': ' on this line; put the value in quotes if it contains ': '"
    return SyntaxProblem(_line(mark), what)


def _unclosed_flow(error: yaml.MarkedYAMLError, _text: str) -> SyntaxProblem | None:
    opened, failed = error.context_mark, error.problem_mark
    brackets = {"while parsing a flow sequence": "[]", "while parsing a flow mapping": "{}"}
    pair = brackets.get(error.context or "")
    if pair is None or opened is None or failed is None:
        return None
    if (error.problem or "").endswith("'<stream end>'"):
        return SyntaxProblem(
            _line(opened),
            f"the '{pair[0]}' opened on line {opened.line + 1} is never closed; close it with "
            f"'{pair[1]}' on that line",
        )
    if failed.line > opened.line:
        # Reported where the parser gave up (the next key, or the end of the file); the
        # bracket that is still open is on the line it opened.
        return SyntaxProblem(
            _line(opened),
            f"the '{pair[0]}' opened on line {opened.line + 1} is still open on line "
            f"{failed.line + 1}; close it with '{pair[1]}' (or add the missing ',')",
        )
    return SyntaxProblem(
        _line(failed),
        f"inside '{pair[0]}...{pair[1]}', separate the items with ',' and close with '{pair[1]}'",
    )


_BLOCK_END = "expected <block end>, but found "
_AFTER_VALUE = {
    "'<block mapping start>'": (
        "this line is indented differently from the lines above it; start each key in the "
        "same column"
    ),
    "'<block sequence start>'": (
        "this list item is indented differently from the items above it; start each '- ' "
        "in the same column"
    ),
    "'<scalar>'": (
        "text after a complete value on this line; if it belongs to the value, put the whole "
        "value in quotes (inside '...', write a ' as '')"
    ),
    "'-'": "a list item ('- ') where a 'key: value' line belongs; indent it under its key",
}


def _text_after_value(error: yaml.MarkedYAMLError, text: str) -> SyntaxProblem | None:
    problem = error.problem or ""
    if not problem.startswith(_BLOCK_END):
        return None
    what = _AFTER_VALUE.get(problem.removeprefix(_BLOCK_END))
    return None if what is None else SyntaxProblem(_line(error.problem_mark), what)


def _second_document(error: yaml.MarkedYAMLError, _text: str) -> SyntaxProblem | None:
    if error.problem != "but found another document":
        return None
    return SyntaxProblem(
        _line(error.problem_mark),
        "a second YAML document ('---'); a settings file holds one, so remove the '---'",
    )


_Explainer = Callable[[yaml.MarkedYAMLError, str], SyntaxProblem | None]
# The runaway quote first: it explains parser errors that would otherwise be blamed on the
# line where the stray second quote happens to be.
_EXPLAINERS: tuple[_Explainer, ...] = (
    _unclosed_quote,
    _runaway_quote,
    _missing_colon,
    _bad_character,
    _bad_escape,
    _undefined_alias,
    _stray_colon,
    _unclosed_flow,
    _text_after_value,
    _second_document,
)
