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
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from .. import cipher, xdg
from ..errors import ExitCode, ScanxferError
from .syntax import explain
from .values import (
    Address,
    Parser,
    did_you_mean,
    in_range,
    one_of,
    parse_address,
    parse_bool,
    parse_duration,
    parse_fingerprint,
    parse_int,
    parse_name,
    parse_networks,
    parse_path,
    parse_rate,
    parse_secret,
    parse_size,
    pattern_list,
    show_value,
)

log = logging.getLogger("scanxfer.config")

__all__ = [
    "AFTER_SEND_MODES",
    "COMMAND_LINE",
    "RECEIVER_CONFIG_PATH",
    "WATCH_METHODS",
    "Address",
    "ConfigError",
    "Parser",
    "ReceiverConfig",
    "SenderConfig",
    "default_sender_config_path",
    "load_receiver_config",
    "load_sender_config",
    "parse_address",
    "parse_duration",
    "parse_rate",
    "parse_size",
]

RECEIVER_CONFIG_PATH = Path("/etc/scanxfer/receiver.yaml")
COMMAND_LINE = "command line"
WATCH_METHODS = ("auto", "inotify", "poll")
AFTER_SEND_MODES = ("keep", "move", "delete")

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Config = TypeVar("_Config", bound="DataclassInstance")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ScanxferError):
    """A setting the user has to fix; the message says where it came from and what would do."""

    exit_code = ExitCode.USAGE


# --- the settings --------------------------------------------------------------------------


def _spec(parse: Parser, *, nullable: bool = False) -> dict[str, object]:
    """Field metadata: how to parse the key and whether YAML null is allowed.

    Nullable keys stand for a value derived at load time (hostname, a directory under
    state_dir), so the dataclass never holds None.
    """
    return {"parse": parse, "nullable": nullable}


def _address(default_host: str, *, listening: bool = False) -> Parser:
    return functools.partial(parse_address, default_host=default_host, listening=listening)


_count = in_range(parse_int, 1, 1024)
_timeout = in_range(parse_duration, 0.001, None, "s")


@dataclass(frozen=True, kw_only=True)
class ReceiverConfig:
    """Receiver settings.  Default values live in config/receiver.yaml, never here."""

    listen: Address = field(metadata=_spec(_address("0.0.0.0", listening=True)))
    name: str = field(metadata=_spec(parse_name, nullable=True))
    state_dir: Path = field(metadata=_spec(parse_path))
    incoming_dir: Path = field(metadata=_spec(parse_path, nullable=True))
    partial_dir: Path | None = field(metadata=_spec(parse_path, nullable=True))
    max_file_size: int = field(metadata=_spec(in_range(parse_size, 1, None, " bytes")))
    max_path_length: int = field(metadata=_spec(in_range(parse_int, 1, 4096, " bytes")))
    max_path_depth: int = field(metadata=_spec(in_range(parse_int, 1, 256)))
    max_connections: int = field(metadata=_spec(_count))
    window: int = field(metadata=_spec(_count))
    handshake_timeout: float = field(metadata=_spec(_timeout))
    idle_timeout: float = field(metadata=_spec(_timeout))
    partial_max_age: float = field(metadata=_spec(_timeout))
    tls: bool = field(metadata=_spec(parse_bool))
    tls_cipher: str = field(metadata=_spec(one_of(cipher.CHOICES)))
    per_sender_dirs: bool = field(metadata=_spec(parse_bool))
    min_free_space: int = field(metadata=_spec(in_range(parse_size, 0, None, " bytes")))
    max_auth_failures: int = field(metadata=_spec(in_range(parse_int, 1, 100000)))
    legacy_listen: Address | None = field(
        metadata=_spec(_address("0.0.0.0", listening=True), nullable=True)
    )
    legacy_allow: tuple[IPNetwork, ...] = field(metadata=_spec(parse_networks))
    # The Prometheus endpoint and status page; None: off.  A bare port is loopback only.
    metrics_listen: Address | None = field(
        metadata=_spec(_address("127.0.0.1", listening=True), nullable=True)
    )


@dataclass(frozen=True, kw_only=True)
class SenderConfig:
    """Sender settings.  Default values live in config/sender.yaml, never here."""

    receiver: Address = field(metadata=_spec(_address("127.0.0.1")))
    name: str = field(metadata=_spec(parse_name, nullable=True))
    watch_dir: Path = field(metadata=_spec(parse_path))
    state_dir: Path = field(metadata=_spec(parse_path, nullable=True))
    patterns: tuple[str, ...] = field(metadata=_spec(pattern_list(allow_empty=False)))
    ignore: tuple[str, ...] = field(metadata=_spec(pattern_list(allow_empty=True)))
    settle_seconds: float = field(metadata=_spec(in_range(parse_duration, 0, 60, "s")))
    watch_method: str = field(metadata=_spec(one_of(WATCH_METHODS)))
    window: int = field(metadata=_spec(_count))
    connect_timeout: float = field(metadata=_spec(_timeout))
    stall_timeout: float = field(metadata=_spec(_timeout))
    retry_initial: float = field(metadata=_spec(_timeout))
    retry_max: float = field(metadata=_spec(_timeout))
    after_send: str = field(metadata=_spec(one_of(AFTER_SEND_MODES)))
    sent_dir: Path = field(metadata=_spec(parse_path, nullable=True))
    key: str | None = field(metadata=_spec(parse_secret, nullable=True))
    fingerprint: str | None = field(metadata=_spec(parse_fingerprint, nullable=True))
    tls: bool = field(metadata=_spec(parse_bool))
    # Bytes per second of payload at most; None: as fast as the link goes.
    max_rate: int | None = field(
        metadata=_spec(in_range(parse_rate, 1000, None, " bytes/s"), nullable=True)
    )
    # The Prometheus endpoint; None: off.  A bare port is loopback only.
    metrics_listen: Address | None = field(
        metadata=_spec(_address("127.0.0.1", listening=True), nullable=True)
    )


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
    return xdg.config_home() / "scanxfer" / "sender.yaml"


def _finish_receiver(values: dict[str, Any], where: Mapping[str, str]) -> ReceiverConfig:
    if values["name"] is None:
        values["name"] = socket.gethostname()
    if values["incoming_dir"] is None:
        values["incoming_dir"] = values["state_dir"] / "incoming"
    # partial_dir stays None, the store's default: a hidden folder inside incoming_dir.
    if values["legacy_listen"] is not None and not values["legacy_allow"]:
        raise ConfigError(
            f"{where['legacy_listen']}: key 'legacy_listen' opens the unauthenticated door "
            f"for prototype senders, but legacy_allow lists no network to accept them from; "
            f"add e.g. legacy_allow: ['192.168.1.0/24'] (the instrument PC's network)"
        )
    legacy = values["legacy_listen"]
    if legacy is not None and legacy == values["listen"] and legacy.port != 0:
        raise ConfigError(
            f"{where['legacy_listen']}: key 'legacy_listen' is the same address as listen; "
            f"give the prototype door its own port, e.g. :5001"
        )
    return ReceiverConfig(**values)


def _finish_sender(values: dict[str, Any], where: Mapping[str, str]) -> SenderConfig:
    if values["name"] is None:
        values["name"] = socket.gethostname()
    if values["state_dir"] is None:
        values["state_dir"] = xdg.state_home() / "scanxfer"
    if values["sent_dir"] is None:
        values["sent_dir"] = Path(values["watch_dir"]).parent / "sent"
    watch = Path(os.path.abspath(values["watch_dir"]))
    if Path(os.path.abspath(values["sent_dir"])).is_relative_to(watch):
        raise ConfigError(
            f"{where['sent_dir']}: key 'sent_dir': {values['sent_dir']} lies inside watch_dir "
            f"{watch}, so moved files would be sent again; choose a folder beside it"
        )
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
    values: Mapping[Any, object]
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
    else:
        log.debug("no %s: the defaults apply", default_path)
    if overrides:
        given = {key: value for key, value in overrides.items() if value is not None}
        layers.append(_Layer(COMMAND_LINE, given, {}))
    return layers


def _read_layer(path: Path | Traversable) -> _Layer:
    label = str(path)
    log.debug("reading settings from %s", label)
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
        problem = explain(exc, text)
        at = "" if problem.line is None else f", line {problem.line}"
        raise ConfigError(f"{label}{at}: YAML syntax error: {problem.text}") from None
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
        raise ConfigError(f"{layer.where(key)}: key {show_value(key)} is not a name")
    if key not in specs:
        hint = did_you_mean(key, specs) or f"; known keys: {', '.join(specs)}"
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
