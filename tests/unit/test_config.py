"""Settings: packaged defaults, layering, parsing and the error messages users see."""

from __future__ import annotations

import dataclasses
import re
import socket
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from scanxfer import config
from scanxfer.config import (
    Address,
    ConfigError,
    ReceiverConfig,
    SenderConfig,
    load_receiver_config,
    load_sender_config,
    parse_address,
    parse_duration,
    parse_rate,
    parse_size,
)
from scanxfer.errors import ExitCode, ScanxferError

CONFIGS = {"receiver.yaml": ReceiverConfig, "sender.yaml": SenderConfig}


@pytest.fixture(autouse=True)
def _no_system_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Keep a real /etc/scanxfer/receiver.yaml on the test machine out of the results."""
    path = tmp_path / "etc" / "receiver.yaml"
    monkeypatch.setattr(config, "RECEIVER_CONFIG_PATH", path)
    return path


def _defaults_text(name: str) -> str:
    return (resources.files("scanxfer") / "defaults" / name).read_text(encoding="utf-8")


def _write(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _error(load: object, *args: object) -> str:
    with pytest.raises(ConfigError) as info:
        load(*args)  # type: ignore[operator]
    return str(info.value)


# --- the packaged defaults are the single source of default values ------------------------


@pytest.mark.parametrize(("name", "cls"), CONFIGS.items())
def test_packaged_defaults_set_every_field_and_nothing_else(name: str, cls: type) -> None:
    keys = set(yaml.safe_load(_defaults_text(name)))
    assert keys == {field.name for field in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", CONFIGS.values())
def test_dataclasses_hold_no_default_values(cls: type) -> None:
    for field in dataclasses.fields(cls):
        assert field.default is dataclasses.MISSING, field.name
        assert field.default_factory is dataclasses.MISSING, field.name


@pytest.mark.parametrize("name", CONFIGS)
def test_every_default_key_has_a_comment_above_it(name: str) -> None:
    lines = _defaults_text(name).splitlines()
    keys = [number for number, line in enumerate(lines) if re.match(r"[a-z_]+:", line)]
    assert keys
    for number in keys:
        assert lines[number - 1].startswith("#"), f"{name}: {lines[number]!r} is unexplained"


def test_receiver_defaults() -> None:
    assert load_receiver_config(None) == ReceiverConfig(
        listen=Address("0.0.0.0", 5000),
        name=socket.gethostname(),
        state_dir=Path("/var/lib/scanxfer"),
        incoming_dir=Path("/var/lib/scanxfer/incoming"),
        partial_dir=None,
        max_file_size=64 * 2**30,
        max_path_length=1024,
        max_path_depth=16,
        max_connections=16,
        window=64,
        handshake_timeout=10.0,
        idle_timeout=300.0,
        partial_max_age=7 * 86400.0,
        tls=True,
        tls_cipher="auto",
        per_sender_dirs=False,
        min_free_space=256 * 2**20,
        max_auth_failures=10,
        legacy_listen=None,
        legacy_allow=(),
        metrics_listen=None,
    )


def test_sender_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert load_sender_config(None) == SenderConfig(
        receiver=Address("127.0.0.1", 5000),
        name=socket.gethostname(),
        watch_dir=Path.home() / "scans",
        state_dir=tmp_path / "state" / "scanxfer",
        patterns=("*.npy",),
        ignore=("*.tmp", "*.part", ".*"),
        settle_seconds=1.0,
        watch_method="auto",
        window=32,
        connect_timeout=10.0,
        stall_timeout=30.0,
        retry_initial=0.5,
        retry_max=60.0,
        after_send="keep",
        sent_dir=Path.home() / "sent",
        key=None,
        fingerprint=None,
        tls=True,
        max_rate=None,
        metrics_listen=None,
    )


def test_sent_dir_inside_watch_dir_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "sender.yaml"
    config.write_text(f"watch_dir: {tmp_path / 'scans'}\nsent_dir: {tmp_path / 'scans' / 'sent'}\n")
    with pytest.raises(ConfigError, match=r"key 'sent_dir': .* lies inside watch_dir"):
        load_sender_config(config)


@pytest.mark.parametrize("value", [None, "", "relative/state"])
def test_sender_state_dir_falls_back_to_local_state(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("XDG_STATE_HOME")
    else:
        monkeypatch.setenv("XDG_STATE_HOME", value)
    assert load_sender_config(None).state_dir == Path.home() / ".local/state/scanxfer"


def test_config_is_frozen() -> None:
    settings = load_receiver_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.window = 1  # type: ignore[misc]


# --- layers: defaults < file < command line -------------------------------------------------


def test_file_overrides_defaults_and_command_line_overrides_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "window: 8\nidle_timeout: 5m\nstate_dir: /srv/scanxfer\n")
    settings = load_receiver_config(path, {"window": "4", "listen": ":6000", "name": None})
    assert settings.window == 4
    assert settings.idle_timeout == 300.0
    assert settings.listen == Address("0.0.0.0", 6000)
    assert settings.name == socket.gethostname()  # None means "option not given"
    assert settings.incoming_dir == Path("/srv/scanxfer/incoming")
    assert settings.partial_dir is None  # the store keeps it inside incoming_dir


def test_command_line_state_dir_moves_derived_dirs(tmp_path: Path) -> None:
    settings = load_receiver_config(None, {"state_dir": tmp_path, "incoming_dir": tmp_path / "in"})
    assert settings.incoming_dir == tmp_path / "in"
    assert settings.partial_dir is None


def test_receiver_reads_system_file_when_no_path_given(_no_system_file: Path) -> None:
    _write(_no_system_file.parent, "name: pi-lab\n", _no_system_file.name)
    assert load_receiver_config(None).name == "pi-lab"


def test_sender_reads_user_file_when_no_path_given(tmp_path: Path) -> None:
    _write(Path.home(), "receiver: 'pi.local:5001'\n", ".config/scanxfer/sender.yaml")
    assert load_sender_config(None).receiver == Address("pi.local", 5001)


def test_sender_file_follows_xdg_config_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    _write(tmp_path, "window: 3\n", "cfg/scanxfer/sender.yaml")
    assert load_sender_config(None).window == 3


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_keeps_defaults(tmp_path: Path, text: str) -> None:
    assert load_receiver_config(_write(tmp_path, text)) == load_receiver_config(None)


def test_paths_expand_tilde(tmp_path: Path) -> None:
    settings = load_sender_config(_write(tmp_path, "watch_dir: ~/instrument/out\n"))
    assert settings.watch_dir == Path.home() / "instrument/out"


# --- errors -----------------------------------------------------------------------------------


def test_explicit_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert _error(load_receiver_config, missing) == f"{missing}: no such file; check the path"


def test_a_settings_error_is_a_usage_error_for_the_exit_status(tmp_path: Path) -> None:
    # Rerunning the same command cannot help: the user has to edit a setting first.
    with pytest.raises(ScanxferError) as info:
        load_sender_config(tmp_path / "nope.yaml")
    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code is ExitCode.USAGE


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert _error(load_sender_config, tmp_path).startswith(f"{tmp_path}: cannot read it")


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = _write(tmp_path, "window: 8\nmax_filesize: 1GiB\n")
    assert _error(load_receiver_config, path) == (
        f"{path}, line 2: unknown key 'max_filesize'; did you mean 'max_file_size'?"
    )


def test_unknown_key_without_a_close_one_lists_the_keys(tmp_path: Path) -> None:
    message = _error(load_sender_config, _write(tmp_path, "colour: blue\n"))
    assert "unknown key 'colour'; known keys: receiver, name, watch_dir," in message


def test_unknown_override_names_the_command_line() -> None:
    message = _error(load_receiver_config, None, {"lisen": "1.2.3.4:5"})
    assert message == "command line: unknown key 'lisen'; did you mean 'listen'?"


def test_bad_override_value_names_the_command_line() -> None:
    message = _error(load_sender_config, None, {"receiver": "pi.local"})
    assert message.startswith("command line: key 'receiver': expected HOST:PORT")


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("max_file_size: lots", "expected a size like '64GiB'"),
        ("max_file_size: 0", "expected at least 1 bytes, got 0"),
        ("window: 0", "expected from 1 to 1024, got 0"),
        ("window: 2000", "expected from 1 to 1024, got 2000"),
        ("window: many", "expected a whole number, got 'many'"),
        ("window: yes", "expected a whole number, got true"),
        ("idle_timeout: soon", "expected a duration like '30s'"),
        ("idle_timeout: 0", "expected at least 0.001s, got 0"),
        ("listen: pi.local", "which has no port"),
        ("listen: ':70000'", "expected a port from 0 to 65535"),
        ("listen: '::1:5000'", "write IPv6 addresses in brackets"),
        ("listen: [1, 2]", "expected HOST:PORT"),
        ("name: 1234", "quote it if it looks like a number"),
        ("state_dir: ~", "a value is required, got null"),
        ("state_dir: {a: 1}", "expected a path"),
        ("max_path_depth: 1.5", "expected a whole number"),
    ],
)
def test_bad_receiver_value(tmp_path: Path, line: str, hint: str) -> None:
    path = _write(tmp_path, f"# a comment\n{line}\n")
    key = line.split(":")[0]
    message = _error(load_receiver_config, path)
    assert message.startswith(f"{path}, line 2: key '{key}': ")
    assert hint in message


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("patterns: '*.npy'", "expected a list of wildcard patterns"),
        ("patterns: []", "expected at least one pattern"),
        ("ignore: ['', x]", "expected a list of wildcard patterns"),
        ("watch_method: inotfy", "did you mean 'inotify'?"),
        ("settle_seconds: 90s", "expected from 0s to 60s, got '90s'"),
        ("receiver: '[::1]'", "expected HOST:PORT"),
        ("receiver: '300.1.1.1:5000'", "is not an IPv4 address"),
        ("receiver: ':0'", "expected a port from 1 to 65535"),
        ("max_rate: fast", "expected a rate like '40MB' or '40MB/s' (bytes per second)"),
        ("max_rate: 10", "expected at least 1000 bytes/s, got 10"),
    ],
)
def test_bad_sender_value(tmp_path: Path, line: str, hint: str) -> None:
    path = _write(tmp_path, f"{line}\n")
    key = line.split(":")[0]
    message = _error(load_sender_config, path)
    assert message.startswith(f"{path}, line 1: key '{key}': ")
    assert hint in message


def test_listener_may_ask_for_any_free_port() -> None:
    assert load_receiver_config(None, {"listen": "127.0.0.1:0"}).listen == Address("127.0.0.1", 0)


def test_empty_ignore_list_is_allowed(tmp_path: Path) -> None:
    assert load_sender_config(_write(tmp_path, "ignore: []\n")).ignore == ()


def test_retry_initial_longer_than_retry_max(tmp_path: Path) -> None:
    path = _write(tmp_path, "retry_initial: 2m\n")
    message = _error(load_sender_config, path, {"retry_max": "1m"})
    assert message.startswith(f"{path}, line 1: key 'retry_initial': 120s is longer than")
    assert "retry_max (60s, from command line)" in message


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "window: 8\nlisten: 0.0.0.0: 5000\n")
    message = _error(load_receiver_config, path)
    assert message.startswith(f"{path}, line 2: YAML syntax error: ")


# Each break goes on line 40 of the commented defaults, with keys, comments and (for the quotes)
# more quotes after it, so a message naming where PyYAML gave up instead would be caught.
_BREAKS = {
    "indented more than the key above": (
        ["max_connections: 8", "  window: 8"],
        "this line is indented more than the key above it; start each key in the same column",
    ),
    "list item indented less than the one above": (
        ["legacy_allow:", "  - 10.0.0.0/8", " - 192.168.0.0/16"],
        "this list item is indented differently from the items above it; start each '- ' in "
        "the same column",
    ),
    "a key indented between two levels": (
        ["name:", "    first: pi", "  second: lab"],
        "this line is indented differently from the lines above it; start each key in the "
        "same column",
    ),
    "a list item where a key belongs": (
        ["- 10.0.0.0/8"],
        "a list item ('- ') where a 'key: value' line belongs; indent it under its key",
    ),
    "a value starting with *": (
        ["name: *pi"],
        "a value cannot start with '*' (YAML reads it as an alias); put the value in quotes",
    ),
    "a double quote never closed": (
        ['name: "pi-lab'],
        'the quote opened on line 40 is never closed; end the value with " on that line',
    ),
    "a single quote closed by an apostrophe in a comment": (
        ["name: 'pi-lab"],
        "the quote opened on line 40 is not closed on that line, so the value runs on to the "
        "next ' on line 44; end the value with ' on line 40",
    ),
    "a tab for indentation": (
        ["\twindow: 8"],
        "a tab, which YAML does not accept for indentation or between a key and its value; "
        "use spaces instead",
    ),
    "no colon": (
        ["window 8"],
        "this line has no ': ' after its key; write 'key: value', with a space after the ':'",
    ),
    "no space after the colon": (
        ["window:8"],
        "this line has no ': ' after its key; write 'key: value', with a space after the ':'",
    ),
    "a second colon": (
        ["listen: 0.0.0.0: 5000"],
        "a second ': ' on this line; put the value in quotes if it contains ': '",
    ),
    "text after a quoted value": (
        ["name: 'Bob's Pi'"],
        "text after a complete value on this line; if it belongs to the value, put the whole "
        "value in quotes (inside '...', write a ' as '')",
    ),
    "an unclosed bracket": (
        ["legacy_allow: [10.0.0.0/8, 192.168.0.0/16"],
        "the '[' opened on line 40 is still open on line 45; close it with ']' (or add the "
        "missing ',')",
    ),
    "a bracket closed by a brace": (
        ["legacy_allow: [10.0.0.0/8, 192.168.0.0/16}"],
        "inside '[...]', separate the items with ',' and close with ']'",
    ),
    "a value starting with @": (
        ["name: @pi"],
        "a value cannot start with '@'; put the value in quotes",
    ),
    "a backslash escape in double quotes": (
        ['incoming_dir: "D:\\scans"'],
        "in a value in double quotes a backslash starts an escape such as \\n; write \\\\ for "
        "a backslash, or use single quotes",
    ),
}


@pytest.mark.parametrize("kind", sorted(_BREAKS))
def test_yaml_syntax_error_names_the_line_of_the_break(tmp_path: Path, kind: str) -> None:
    broken, expected = _BREAKS[kind]
    lines = _defaults_text("receiver.yaml").splitlines(keepends=True)
    at = 40 - len(broken)  # the last broken line is line 40
    text = "".join(lines[:at]) + "".join(f"{line}\n" for line in broken) + "".join(lines[at:])
    path = _write(tmp_path, text)
    assert _error(load_receiver_config, path) == f"{path}, line 40: YAML syntax error: {expected}"


@pytest.mark.parametrize("bracket", ["[", "{"])
def test_a_bracket_never_closed(tmp_path: Path, bracket: str) -> None:
    path = _write(tmp_path, f"window: 8\nlegacy_allow: {bracket}10.0.0.0/8\n# the end\n")
    closing = "]" if bracket == "[" else "}"
    assert _error(load_receiver_config, path) == (
        f"{path}, line 2: YAML syntax error: the '{bracket}' opened on line 2 is never closed; "
        f"close it with '{closing}' on that line"
    )


def test_a_second_document(tmp_path: Path) -> None:
    path = _write(tmp_path, "window: 8\n---\nwindow: 9\n")
    assert _error(load_receiver_config, path) == (
        f"{path}, line 2: YAML syntax error: a second YAML document ('---'); a settings file "
        f"holds one, so remove the '---'"
    )


def test_duplicate_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "window: 8\n\nwindow: 9\n")
    assert _error(load_receiver_config, path) == (
        f"{path}, line 3: key 'window' is already set on line 1; keep one of them"
    )


@pytest.mark.parametrize(("text", "kind"), [("- window\n", "a list"), ("window\n", "a single")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = _write(tmp_path, text)
    message = _error(load_sender_config, path)
    assert message == f"{path}: expected 'key: value' lines at the top level, got {kind}" + (
        " value" if kind == "a single" else ""
    )


def test_non_text_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "1: x\n")
    assert _error(load_sender_config, path) == f"{path}, line 1: key 1 is not a name"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert _error(load_receiver_config, path) == f"{path}: not UTF-8 text; is this the right file?"


# --- value parsers ----------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


@given(st.integers(0, 10**9), st.sampled_from(sorted(_SIZE_UNITS)), st.booleans())
def test_parse_size_any_unit(number: int, unit: str, space: bool) -> None:
    text = f"{number}{' ' if space else ''}{unit}"
    assert parse_size(text) == number * _SIZE_UNITS[unit]
    assert parse_size(text.lower()) == number * _SIZE_UNITS[unit]


@pytest.mark.parametrize(("value", "size"), [(4096, 4096), ("4096", 4096), ("1.5KiB", 1536)])
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "rate"), [(40_000_000, 40_000_000), ("40MB", 40_000_000), (" 2MiB/s ", 2 << 20)]
)
def test_parse_rate(value: object, rate: int) -> None:
    assert parse_rate(value) == rate


def test_max_rate_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "max_rate: 40MB/s\n")
    assert load_sender_config(path).max_rate == 40_000_000
    assert load_sender_config(path, {"max_rate": "500KiB"}).max_rate == 500 * 1024


@pytest.mark.parametrize("value", ["lots", "-1", -1, 1.5, True, None, "0.5B", "10XB", "1e3"])
def test_parse_size_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size like '64GiB'"):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), (1.5, 1.5), ("10", 10.0), ("30s", 30.0), ("5m", 300.0), ("250ms", 0.25),
     ("2h", 7200.0), ("7d", 604800.0), ("0.5 s", 0.5)],
)  # fmt: skip
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["soon", "-1s", -1, True, None, float("nan"), float("inf"), "5 minutes", "1y"]
)
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like '30s'"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("192.168.1.50:5000", Address("192.168.1.50", 5000)),
        ("pi.local:22", Address("pi.local", 22)),
        ("[::1]:5000", Address("::1", 5000)),
        (" [fe80::1%eth0]:80 ", Address("fe80::1%eth0", 80)),
        (":5000", Address("default", 5000)),
        ("5000", Address("default", 5000)),
        (65535, Address("default", 65535)),
    ],
)
def test_parse_address(value: object, address: Address) -> None:
    assert parse_address(value, "default") == address


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("pi.local", "which has no port"),
        ("pi.local:0", "expected a port from 1 to 65535"),
        ("pi.local:65536", "expected a port from 1 to 65535"),
        ("pi.local:http", "expected a port from 1 to 65535"),
        ("::1", "in brackets"),
        ("[::1]", "expected HOST:PORT"),
        ("[nonsense]:5", "is not an IPv6 address"),
        ("my pi:5", "expected a host name or IP address"),
        (0, "expected a port from 1 to 65535"),
        (True, "expected HOST:PORT"),
        (None, "expected HOST:PORT"),
    ],
)
def test_parse_address_refuses(value: object, hint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(hint)):
        parse_address(value, "default")


@given(st.ip_addresses(), st.integers(1, 65535))
def test_address_text_round_trips(ip: object, port: int) -> None:
    address = Address(str(ip), port)
    assert parse_address(str(address), "default") == address


def test_the_legacy_door_needs_networks_to_let_in(tmp_path: Path) -> None:
    config = _write(tmp_path, "legacy_listen: ':5001'\n")
    with pytest.raises(ConfigError, match="legacy_allow lists no network"):
        load_receiver_config(config)
    config = _write(tmp_path, "legacy_listen: ':5001'\nlegacy_allow: ['192.168.1.0/24']\n")
    settings = load_receiver_config(config)
    assert settings.legacy_listen == Address("0.0.0.0", 5001)
    assert [str(net) for net in settings.legacy_allow] == ["192.168.1.0/24"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("legacy_allow: ['192.168.1.300/24']\n", "not a network"),
        ("tls: maybe\n", "expected true or false"),
        ("legacy_listen: ':5000'\nlegacy_allow: [10.0.0.1]\n", "same address as listen"),
    ],
)
def test_bad_security_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_receiver_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("key: not-a-key\n", "base64url"),
        ("fingerprint: abc\n", "64 hex digits"),
    ],
)
def test_bad_sender_credentials_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sender_config(_write(tmp_path, text))


def test_a_fingerprint_may_be_written_with_colons(tmp_path: Path) -> None:
    pairs = ":".join(["AB"] * 32)
    settings = load_sender_config(_write(tmp_path, f"fingerprint: '{pairs}'\n"))
    assert settings.fingerprint == "ab" * 32


def test_a_bare_metrics_port_listens_on_loopback_only(tmp_path: Path) -> None:
    """The status page shows file names: the LAN only when an address says so."""
    path = tmp_path / "receiver.yaml"
    path.write_text("metrics_listen: ':9108'\n")
    assert load_receiver_config(path).metrics_listen == Address("127.0.0.1", 9108)
    path.write_text("metrics_listen: 192.168.1.50:9108\n")
    assert load_receiver_config(path).metrics_listen == Address("192.168.1.50", 9108)
