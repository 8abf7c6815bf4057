"""The XDG base directories of the user running scanxfer (the sender's settings, state, units)."""

from __future__ import annotations

import os
from pathlib import Path


def base_dir(variable: str, fallback: str) -> Path:
    """$`variable` if it is an absolute path, else ~/`fallback` (e.g. XDG_CONFIG_HOME, .config).

    The XDG spec says to ignore relative values, which are usually a broken profile script.
    """
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else Path.home() / fallback


def config_home() -> Path:
    """$XDG_CONFIG_HOME, or ~/.config."""
    return base_dir("XDG_CONFIG_HOME", ".config")


def state_home() -> Path:
    """$XDG_STATE_HOME, or ~/.local/state."""
    return base_dir("XDG_STATE_HOME", ".local/state")
