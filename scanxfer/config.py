"""Settings: commented YAML files -> frozen dataclasses, checked strictly.

Three layers, later ones winning: the packaged defaults (config/*.yaml, installed as
scanxfer/defaults/ -- the only place default values are written down), the user's file, and
command-line overrides.  Every value goes through the same parser whatever layer it comes
from, and every error names where the value came from, the key and what would have been
accepted, because the person reading it is usually editing /etc/scanxfer/receiver.yaml over
ssh on a Pi and has nothing else to go on.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml

RECEIVER_CONFIG_PATH = Path("/etc/scanxfer/receiver.yaml")
COMMAND_LINE = "command line"
WATCH_METHODS = ("auto", "inotify", "poll")

Parser = Callable[[object], Any]
_Config = TypeVar("_Config")


class ConfigError(Exception):
    """A setting the user has to fix; the message says where it came from and what would do."""


@dataclass(frozen=True)
class Address:
    """A TCP endpoint; `host` is bare (no IPv6 brackets), ready for socket calls."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# --- value parsers: each raises ValueError with a hint; the loader adds file and key ---------

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_DURATION_UNITS = {"": 1, "ms": Decimal("0.001"), "s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER_WITH_UNIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE | re.ASCII)
_WHOLE_NUMBER = re.compile(r"\s*\d+\s*", re.ASCII)
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]{1,253}")


def _show(value: object) -> str:
    """Render a value the way the user wrote it in YAML, so they can find it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    # YAML turns `yes`/`true` into bool, a subclass of int; a count of `true` is a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _number_with_unit(value: object, units: Mapping[str, int | Decimal]) -> Decimal | None:
    """'64GiB' -> 64 * 2**30 as a Decimal, or None when `value` is not of that form."""
    if not isinstance(value, str):
        return None
    match = _NUMBER_WITH_UNIT.fullmatch(value)
    if match is None or match[2].lower() not in units:
        return None
    return Decimal(match[1]) * units[match[2].lower()]


def parse_size(value: object) -> int:
    """Bytes from 4096, '4096', '10MB' or '64GiB' (KB = 1000 bytes, KiB = 1024)."""
    total = Decimal(value) if _is_int(value) else _number_with_unit(value, _SIZE_UNITS)
    if total is None or total < 0 or total != total.to_integral_value():
        raise ValueError(
            f"expected a size like '64GiB', '512MiB', '10MB' or a number of bytes, "
            f"got {_show(value)}"
        )
    return int(total)


def parse_duration(value: object) -> float:
    """Seconds from 30, 1.5, '30s', '5m', '2h', '7d' or '250ms'."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        number = _number_with_unit(value, _DURATION_UNITS)
        seconds = math.nan if number is None else float(number)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"expected a duration like '30s', '5m', '250ms' or a number of seconds, "
            f"got {_show(value)}"
        )
    return seconds


def parse_address(value: object, default_host: str, *, listening: bool = False) -> Address:
    """An Address from 'HOST:PORT', '[::1]:PORT', ':PORT', 'PORT' or a bare port number.

    Without a host, `default_host` is used: all interfaces for a listener, this machine for
    a client.  Only a listener may use port 0, which asks the kernel for a free port (tests
    and demos run receivers side by side that way).
    """
    example = "expected HOST:PORT like '192.168.1.50:5000', '[::1]:5000' or ':5000'"
    if _is_int(value):
        host, port = "", str(value)
    elif isinstance(value, str):
        host, port = _split_host_port(value.strip(), example)
    else:
        raise ValueError(f"{example}, got {_show(value)}")
    lowest = 0 if listening else 1
    if not (port.isascii() and port.isdigit()) or not lowest <= int(port) <= 65535:
        raise ValueError(
            f"expected a port from {lowest} to 65535 after the ':', got {_show(value)}"
        )
    return Address(host or default_host, int(port))


def _split_host_port(text: str, example: str) -> tuple[str, str]:
    """('host', 'port') from the text; host is '' when only a port was given."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{example}, got {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
        return host, rest[1:]
    if text.count(":") > 1:
        raise ValueError(f"write IPv6 addresses in brackets, like '[::1]:5000', got {text!r}")
    host, colon, port = text.rpartition(":")
    if not colon:
        if not text.isdigit():
            raise ValueError(f"{example}, got {text!r}, which has no port")
        return "", text
    if host:
        _check_host(host, text)
    return host, port


def _check_host(host: str, text: str) -> None:
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"expected a host name or IP address before the ':', got {text!r}")
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv4 address") from None


def _parse_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value):
        return int(value)  # from the command line, where everything is text
    raise ValueError(f"expected a whole number, got {_show(value)}")


def _parse_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"expected a name (quote it if it looks like a number), got {_show(value)}"
        )
    if not value.isprintable() or len(value.encode()) > 255:
        raise ValueError(f"expected at most 255 bytes of printable text, got {_show(value)}")
    return value.strip()


def _parse_path(value: object) -> Path:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a path, got {_show(value)}")
    if "\0" in value:
        raise ValueError(f"a path cannot contain a NUL character, got {_show(value)}")
    return Path(value).expanduser()


def _patterns(*, allow_empty: bool) -> Parser:
    def parse(value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, str) and item for item in value
        ):
            raise ValueError(
                f"expected a list of wildcard patterns like ['*.npy'], got {_show(value)}"
            )
        if not value and not allow_empty:
            raise ValueError("expected at least one pattern; with none, nothing would be sent")
        return tuple(value)

    return parse


def _choice(options: tuple[str, ...]) -> Parser:
    def parse(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise ValueError(
            f"expected one of {', '.join(options)}, got {_show(value)}"
            + _did_you_mean(str(value), options)
        )

    return parse


def _ranged(parse: Parser, low: float, high: float | None, unit: str = "") -> Parser:
    """Wrap `parse` so results outside low..high are refused with the allowed range."""

    def number(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    if high is None:
        allowed = f"at least {number(low)}{unit}"
    else:
        allowed = f"from {number(low)}{unit} to {number(high)}{unit}"

    def parse_in_range(value: object) -> Any:
        result = parse(value)
        if result < low or (high is not None and result > high):
            raise ValueError(f"expected {allowed}, got {_show(value)}")
        return result

    return parse_in_range


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


# --- the settings --------------------------------------------------------------------------


def _spec(parse: Parser, *, nullable: bool = False) -> dict[str, object]:
    """Field metadata: how to parse the key and whether YAML null is allowed.

    Nullable keys stand for a value derived at load time (hostname, a directory under
    state_dir), so the dataclass never holds None.
    """
    return {"parse": parse, "nullable": nullable}


def _address(default_host: str, *, listening: bool = False) -> Parser:
    return functools.partial(parse_address, default_host=default_host, listening=listening)


_count = _ranged(_parse_int, 1, 1024)
_timeout = _ranged(parse_duration, 0.001, None, "s")


@dataclass(frozen=True, kw_only=True)
class ReceiverConfig:
    """Receiver settings.  Default values live in config/receiver.yaml, never here."""

    listen: Address = field(metadata=_spec(_address("0.0.0.0", listening=True)))
    name: str = field(metadata=_spec(_parse_name, nullable=True))
    state_dir: Path = field(metadata=_spec(_parse_path))
    incoming_dir: Path = field(metadata=_spec(_parse_path, nullable=True))
    partial_dir: Path = field(metadata=_spec(_parse_path, nullable=True))
    max_file_size: int = field(metadata=_spec(_ranged(parse_size, 1, None, " bytes")))
    max_path_length: int = field(metadata=_spec(_ranged(_parse_int, 1, 4096, " bytes")))
    max_path_depth: int = field(metadata=_spec(_ranged(_parse_int, 1, 256)))
    max_connections: int = field(metadata=_spec(_count))
    window: int = field(metadata=_spec(_count))
    handshake_timeout: float = field(metadata=_spec(_timeout))
    idle_timeout: float = field(metadata=_spec(_timeout))
    partial_max_age: float = field(metadata=_spec(_timeout))


@dataclass(frozen=True, kw_only=True)
class SenderConfig:
    """Sender settings.  Default values live in config/sender.yaml, never here."""

    receiver: Address = field(metadata=_spec(_address("127.0.0.1")))
    name: str = field(metadata=_spec(_parse_name, nullable=True))
    watch_dir: Path = field(metadata=_spec(_parse_path))
    state_dir: Path = field(metadata=_spec(_parse_path, nullable=True))
    patterns: tuple[str, ...] = field(metadata=_spec(_patterns(allow_empty=False)))
    ignore: tuple[str, ...] = field(metadata=_spec(_patterns(allow_empty=True)))
    settle_seconds: float = field(metadata=_spec(_ranged(parse_duration, 0, 60, "s")))
    watch_method: str = field(metadata=_spec(_choice(WATCH_METHODS)))
    window: int = field(metadata=_spec(_count))
    connect_timeout: float = field(metadata=_spec(_timeout))
    stall_timeout: float = field(metadata=_spec(_timeout))
    retry_initial: float = field(metadata=_spec(_timeout))
    retry_max: float = field(metadata=_spec(_timeout))


def load_receiver_config(
    path: Path | None, overrides: Mapping[str, object] | None = None
) -> ReceiverConfig:
    """Defaults < `path` (or /etc/scanxfer/receiver.yaml if it exists) < `overrides`.

    Overrides use the key names of the file; None values in them mean "not given".
    """
    layers = _layers("receiver.yaml", path, RECEIVER_CONFIG_PATH, overrides)
    return _merge(ReceiverConfig, layers, _finish_receiver)


def load_sender_config(
    path: Path | None, overrides: Mapping[str, object] | None = None
) -> SenderConfig:
    """Defaults < `path` (or the user's sender.yaml if it exists) < `overrides`.

    Overrides use the key names of the file; None values in them mean "not given".
    """
    layers = _layers("sender.yaml", path, default_sender_config_path(), overrides)
    return _merge(SenderConfig, layers, _finish_sender)


def default_sender_config_path() -> Path:
    """$XDG_CONFIG_HOME/scanxfer/sender.yaml, or ~/.config/scanxfer/sender.yaml."""
    return _xdg_dir("XDG_CONFIG_HOME", ".config") / "scanxfer" / "sender.yaml"


def _xdg_dir(variable: str, fallback: str) -> Path:
    # The XDG spec says to ignore relative values, which are usually a broken profile script.
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else Path.home() / fallback


def _finish_receiver(values: dict[str, Any], where: Mapping[str, str]) -> ReceiverConfig:
    if values["name"] is None:
        values["name"] = socket.gethostname()
    for key, default_name in (("incoming_dir", "incoming"), ("partial_dir", "partial")):
        if values[key] is None:
            values[key] = values["state_dir"] / default_name
    incoming = Path(os.path.abspath(values["incoming_dir"]))
    partial = Path(os.path.abspath(values["partial_dir"]))
    if partial.is_relative_to(incoming):
        raise ConfigError(
            f"partial_dir {partial} (from {where['partial_dir']}) lies inside incoming_dir "
            f"{incoming} (from {where['incoming_dir']}), so unfinished files would look "
            f"delivered; set partial_dir beside it, e.g. {incoming.parent / 'partial'}"
        )
    return ReceiverConfig(**values)


def _finish_sender(values: dict[str, Any], where: Mapping[str, str]) -> SenderConfig:
    if values["name"] is None:
        values["name"] = socket.gethostname()
    if values["state_dir"] is None:
        values["state_dir"] = _xdg_dir("XDG_STATE_HOME", ".local/state") / "scanxfer"
    if values["retry_initial"] > values["retry_max"]:
        raise ConfigError(
            f"{where['retry_initial']}: key 'retry_initial': {values['retry_initial']:g}s is "
            f"longer than retry_max ({values['retry_max']:g}s, from {where['retry_max']}); "
            f"make it shorter"
        )
    return SenderConfig(**values)


# --- loading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    """Unparsed values from one source, and the line each key is on (files only)."""

    label: str
    values: Mapping[object, object]
    lines: Mapping[str, int]

    def where(self, key: object) -> str:
        line = self.lines.get(str(key))
        return self.label if line is None else f"{self.label}, line {line}"


def _layers(
    name: str,
    path: Path | None,
    default_path: Path,
    overrides: Mapping[str, object] | None,
) -> list[_Layer]:
    layers = [_read_layer(resources.files("scanxfer") / "defaults" / name)]
    if path is not None:
        layers.append(_read_layer(Path(path)))
    elif default_path.exists():
        layers.append(_read_layer(default_path))
    if overrides:
        given = {key: value for key, value in overrides.items() if value is not None}
        layers.append(_Layer(COMMAND_LINE, given, {}))
    return layers


def _read_layer(path: Path | Traversable) -> _Layer:
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{label}: no such file; check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text; is this the right file?") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read it: {exc.strerror or exc}") from None
    return _parse_yaml(text, label)


def _parse_yaml(text: str, label: str) -> _Layer:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines = _key_lines(node, label)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f", line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "cannot parse"
        raise ConfigError(
            f"{label}{at}: YAML syntax error: {problem}; check the indentation, and quote "
            f"values that contain ': ' or ' #'"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:  # an empty file, or only comments: every key keeps its default
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{label}: expected 'key: value' lines at the top level, got "
            f"{'a list' if isinstance(data, list) else 'a single value'}"
        )
    return _Layer(label, data, lines)


def _key_lines(node: yaml.Node | None, label: str) -> dict[str, int]:
    """Line of each top-level key, refusing duplicates (YAML would silently keep the last)."""
    lines: dict[str, int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, _ in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError(f"{label}, line {line}: a key must be a plain name")
        first = lines.setdefault(key_node.value, line)
        if first != line:
            raise ConfigError(
                f"{label}, line {line}: key '{key_node.value}' is already set on line "
                f"{first}; keep one of them"
            )
    return lines


def _merge(
    cls: type[_Config],
    layers: list[_Layer],
    finish: Callable[[dict[str, Any], Mapping[str, str]], _Config],
) -> _Config:
    specs = {spec.name: spec for spec in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for layer in layers:
        for key, raw in layer.values.items():
            name = _known_key(key, specs, layer)
            values[name] = _parse_value(specs[name], raw, layer)
            where[name] = layer.where(name)
    missing = sorted(specs.keys() - values.keys())
    if missing:
        raise ConfigError(
            f"{layers[0].label}: no default for {', '.join(missing)}; "
            f"the installed defaults are incomplete, reinstall scanxfer"
        )
    return finish(values, where)


def _known_key(key: object, specs: Mapping[str, dataclasses.Field[Any]], layer: _Layer) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"{layer.where(key)}: key {_show(key)} is not a name")
    if key not in specs:
        hint = _did_you_mean(key, specs) or f"; known keys: {', '.join(specs)}"
        raise ConfigError(f"{layer.where(key)}: unknown key '{key}'{hint}")
    return key


def _parse_value(spec: dataclasses.Field[Any], raw: object, layer: _Layer) -> Any:
    where = f"{layer.where(spec.name)}: key '{spec.name}'"
    if raw is None:
        if spec.metadata["nullable"]:
            return None
        raise ConfigError(
            f"{where}: a value is required, got null (in YAML, an empty value or a bare ~ "
            f"means null)"
        )
    try:
        return spec.metadata["parse"](raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
