"""Edit a settings file the way a person would: change a key's line, keep every comment.

`scanxfer pair` writes the pairing into sender.yaml and `scanxfer store-in` the folder into
receiver.yaml; both files are commented by hand, so neither is rewritten from a parsed tree.
"""

from __future__ import annotations

import re

_TOP_LEVEL_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t]*:(?:[ \t]|\r?\n|$)")


def set_top_level_keys(text: str, values: dict[str, str], by: str) -> str:
    """`text` with each top-level `key: ...` line of `values` replaced, missing ones appended.

    `values` are YAML text already.  Indented lines after a replaced key belong to its old
    value (a list or a folded string) and go with it; comments stay wherever they are.
    Appended keys follow a comment naming the command `by` that set them.
    """
    out: list[str] = []
    seen: set[str] = set()
    replacing = False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if replacing and line[:1] in (" ", "\t") and stripped and not stripped.startswith("#"):
            continue
        match = _TOP_LEVEL_KEY.match(line)
        replacing = match is not None and match[1] in values
        if match is not None and replacing:
            out.append(f"{match[1]}: {values[match[1]]}\n")
            seen.add(match[1])
        else:
            out.append(line)
    missing = [key for key in values if key not in seen]
    if missing:
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(f"\n# Set by `{by}`.\n")
        out.extend(f"{key}: {values[key]}\n" for key in missing)
    return "".join(out)
