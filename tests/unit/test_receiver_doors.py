"""What every door shares (doors.Door), the doors the settings open, and the start's errors.

Real sockets on 127.0.0.1; a small door of the tests' own, whose connections wait for
word from the test, shows what the base does for any door.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanxfer.config import Address, ReceiverConfig, load_receiver_config
from scanxfer.errors import ExitCode
from scanxfer.receiver import Services, Stats, serve
from scanxfer.receiver.doors import (
    HANDSHAKES_PER_ADDRESS,
    Door,
    HandshakeBudget,
    why_not_listening,
)
from scanxfer.receiver.gate import Gate
from scanxfer.receiver.protocol_door import ProtocolDoor
from scanxfer.receiver.prototype_door import PrototypeDoor
from scanxfer.receiver.server import open_doors
from scanxfer.store import Store, StoreLimits

GIVE_UP_SECONDS = 30  # a bound for waits that end at once; never an assertion about speed


def receiver_config(tmp_path: Path, **settings: str) -> ReceiverConfig:
    values = {"state_dir": str(tmp_path / "state"), "tls": "false", **settings}
    path = tmp_path / "receiver.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    return load_receiver_config(path)


class HeldConnection:
    """Sends one line, then holds the connection until told to stop.

    `settled` False: still in its "handshake", until the test settles it through the door.
    """

    def __init__(self, sock: socket.socket, settled: bool = True) -> None:
        self.sock = sock
        self.settled = settled
        self.stopped = threading.Event()
        self.aborted = False
        self.reloaded: list[ReceiverConfig] = []

    def run(self) -> None:
        try:
            self.sock.sendall(b"hello\n")
            self.stopped.wait(GIVE_UP_SECONDS)
        finally:
            self.sock.close()

    def stop(self) -> None:
        self.stopped.set()

    def abort(self) -> None:
        self.aborted = True
        self.stopped.set()

    def reconfigure(self, config: ReceiverConfig) -> None:
        self.reloaded.append(config)


class HeldDoor(Door[HeldConnection]):
    label = "test door"
    setting = "listen"
    thread_prefix = "held"

    def __init__(
        self,
        config: ReceiverConfig,
        refused: frozenset[str] = frozenset(),
        handshakes: bool = False,
    ) -> None:
        super().__init__(Address("127.0.0.1", 0), config, 64, logging.getLogger("test"))
        self.refused = refused
        self.handshakes = handshakes  # its connections start in a handshake
        self.turned_away: list[int] = []

    def screen(self, host: str, peer: str) -> bool:
        return host not in self.refused

    def serve(self, sock: socket.socket, host: str, peer: str) -> HeldConnection:
        return HeldConnection(sock, settled=not self.handshakes)

    def turn_away(self, sock: socket.socket, host: str, peer: str, count: int) -> None:
        self.turned_away.append(count)
        sock.sendall(b"busy\n")
        sock.close()


@pytest.fixture
def config(tmp_path: Path) -> ReceiverConfig:
    return receiver_config(tmp_path, max_connections="2")


@pytest.fixture
def door(config: ReceiverConfig) -> Iterator[HeldDoor]:
    opened = HeldDoor(config)
    yield opened
    opened.close()


def knock(door: Door[HeldConnection], source: str = "127.0.0.1") -> socket.socket:
    """Connect and let the door accept, as the server's loop does when the listener is readable."""
    sock = socket.create_connection(
        ("127.0.0.1", door.address.port), timeout=GIVE_UP_SECONDS, source_address=(source, 0)
    )
    door.accept()
    return sock


def first_line(sock: socket.socket) -> bytes:
    with sock.makefile("rb") as stream:
        return stream.readline()


def test_each_connection_is_served_in_a_thread_of_its_own(door: HeldDoor) -> None:
    first, second = knock(door), knock(door)
    with first, second:
        assert first_line(first) == first_line(second) == b"hello\n"
        assert len(door.connections) == 2
        names = {thread.name for thread in threading.enumerate()}
        assert f"held 127.0.0.1:{first.getsockname()[1]}" in names


def test_over_max_connections_the_door_turns_away(door: HeldDoor) -> None:
    held = [knock(door), knock(door)]
    with knock(door) as third:
        assert first_line(third) == b"busy\n"
    assert door.turned_away == [2]
    for sock in held:
        sock.close()


def test_a_finished_connection_frees_its_place(door: HeldDoor) -> None:
    first, second = knock(door), knock(door)
    door.connections[0].stop()  # it ends, as a connection does when its peer leaves
    join_thread_of(first)
    # The accept reaps before it counts: the place is free once the thread is gone.
    with knock(door) as third:
        assert first_line(third) == b"hello\n"
    assert door.turned_away == []
    first.close()
    second.close()


def join_thread_of(sock: socket.socket) -> None:
    name = f"held 127.0.0.1:{sock.getsockname()[1]}"
    for thread in threading.enumerate():
        if thread.name == name:
            thread.join(GIVE_UP_SECONDS)


def test_a_screened_peer_is_closed_without_a_thread(config: ReceiverConfig) -> None:
    door = HeldDoor(config, refused={"127.0.0.1"})
    try:
        with knock(door) as sock:
            assert sock.recv(16) == b""
        assert door.connections == []
    finally:
        door.close()


def test_stop_ends_every_connection_and_wait_joins_them(door: HeldDoor) -> None:
    held = [knock(door), knock(door)]
    door.stop()
    door.wait()
    assert door.connections == []
    for sock in held:
        with sock:
            assert first_line(sock) == b"hello\n"
            assert sock.recv(16) == b""  # closed by the door's connection
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", door.address.port), timeout=GIVE_UP_SECONDS)


def test_update_applies_max_connections_to_new_connections(door: HeldDoor, tmp_path: Path) -> None:
    held = knock(door)
    reloaded = receiver_config(tmp_path, max_connections="1")
    door.update(reloaded)
    # The open connection is told too (its admission limits follow the reload).
    assert [connection.reloaded for connection in door.connections] == [[reloaded]]
    with knock(door) as second:
        assert first_line(second) == b"busy\n"
    held.close()


def services_for(config: ReceiverConfig) -> Services:
    limits = StoreLimits(config.max_path_length, config.max_path_depth)
    store = Store(config.incoming_dir, config.partial_dir, limits)
    return Services(store, Stats(), Gate(config))


def test_the_settings_open_the_scanxfer_door_and_maybe_the_prototype_door(
    tmp_path: Path,
) -> None:
    config = receiver_config(tmp_path, listen="127.0.0.1:0")
    [only] = open_doors(config, services_for(config))
    assert isinstance(only, ProtocolDoor)
    only.close()
    both = receiver_config(
        tmp_path, listen="127.0.0.1:0", legacy_listen="127.0.0.1:0", legacy_allow="['127.0.0.1']"
    )
    doors = open_doors(both, services_for(both))
    assert [type(door) for door in doors] == [ProtocolDoor, PrototypeDoor]
    for door in doors:
        door.close()


def test_no_listener_is_left_open_when_a_later_door_cannot_listen(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with socket.create_server(("127.0.0.1", 0)) as probe:
            free_port = probe.getsockname()[1]
        config = receiver_config(
            tmp_path,
            listen=f"127.0.0.1:{free_port}",
            legacy_listen=f"127.0.0.1:{port}",
            legacy_allow="['127.0.0.1']",
        )
        # Kept: its traceback holds the doors opened, so only an explicit close frees a port.
        with pytest.raises(OSError) as caught:
            open_doors(config, services_for(config))
    # The scanxfer door's port was given back: it can be listened on again at once.
    socket.create_server(("127.0.0.1", free_port)).close()
    assert caught.value.errno is not None


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def test_a_privileged_port_is_named_as_such() -> None:
    # Tested here rather than with a real bind: the CI runs as root, which may take any port.
    message = why_not_listening(Address("0.0.0.0", 80), "listen", _os_error(errno.EACCES))
    assert message == (
        "cannot listen on 0.0.0.0:80: ports below 1024 are privileged, and this user may not "
        "listen on them; choose a port from 1024 up in 'listen', e.g. ':5000'"
    )


def test_only_a_port_in_use_suggests_another_receiver() -> None:
    address = Address("192.0.2.1", 5001)
    in_use = why_not_listening(address, "legacy_listen", _os_error(errno.EADDRINUSE))
    assert in_use == (
        "cannot listen on 192.0.2.1:5001: the port is in use by another program (is another "
        "receiver running? 'ss -ltnp' shows which program has it); stop it, or choose another "
        "port in 'legacy_listen'"
    )
    not_here = why_not_listening(address, "legacy_listen", _os_error(errno.EADDRNOTAVAIL))
    assert not_here == (
        "cannot listen on 192.0.2.1:5001: no network interface of this machine has the address "
        "192.0.2.1; fix 'legacy_listen' in the settings, e.g. ':5001' for all addresses"
    )
    # EACCES on a high port is not about privileged ports (a security module, say).
    other = why_not_listening(address, "listen", _os_error(errno.EACCES))
    assert other == (
        "cannot listen on 192.0.2.1:5001: Permission denied; check 'listen' in the settings"
    )


def test_a_state_dir_that_cannot_be_made_ends_the_start_with_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = receiver_config(
        tmp_path,
        tls="true",
        state_dir=str(blocker / "state"),
        incoming_dir=str(tmp_path / "incoming"),
        partial_dir=str(tmp_path / "partial"),
    )
    with caplog.at_level(logging.ERROR, "scanxfer.receiver"):
        assert serve(config) == ExitCode.UNREACHABLE
    assert f"cannot set up the TLS identity in {blocker / 'state'}: " in caplog.text


@pytest.fixture
def handshake_door(config: ReceiverConfig) -> Iterator[HeldDoor]:
    opened = HeldDoor(config, handshakes=True)  # max_connections 2: 4 handshakes in all
    yield opened
    opened.close()


def dropped(door: HeldDoor) -> list[bool]:
    return [connection.aborted for connection in door.connections]


def test_past_the_handshake_budget_of_an_address_its_oldest_handshake_is_dropped(
    handshake_door: HeldDoor, caplog: pytest.LogCaptureFixture
) -> None:
    strangers = [knock(handshake_door, "127.0.0.2") for _ in range(HANDSHAKES_PER_ADDRESS)]
    assert dropped(handshake_door) == [False] * HANDSHAKES_PER_ADDRESS
    with caplog.at_level(logging.WARNING, "test"):
        strangers.append(knock(handshake_door, "127.0.0.2"))
    assert dropped(handshake_door) == [True] + [False] * HANDSHAKES_PER_ADDRESS
    # Dropped is dropped: proving its key a moment later does not get it a slot.
    assert not handshake_door.settle(handshake_door.connections[0])
    assert "dropped the oldest connection from 127.0.0.2 that had not finished its handshake: " in (
        caplog.text
    )
    assert "already 4 from its address were waiting for theirs (the handshake budget)" in (
        caplog.text
    )
    # Another address still gets its chance, and it is the strangers that make room.
    with knock(handshake_door, "127.0.0.1") as paired:
        assert first_line(paired) == b"hello\n"
    assert handshake_door.turned_away == []
    for sock in strangers:
        sock.close()


def test_past_the_budget_in_all_the_oldest_handshake_anywhere_is_dropped(
    handshake_door: HeldDoor,
) -> None:
    total = HandshakeBudget.of(handshake_door.config).total
    strangers = [knock(handshake_door, f"127.0.0.{2 + n}") for n in range(total + 1)]
    assert dropped(handshake_door) == [True] + [False] * total
    for sock in strangers:
        sock.close()


def test_max_connections_counts_only_settled_connections_and_strangers_never_take_them(
    handshake_door: HeldDoor,
) -> None:
    first = knock(handshake_door)
    [one] = handshake_door.connections
    assert handshake_door.settle(one)
    # Idle strangers by the dozen: they drop one another, never a settled connection.
    strangers = [knock(handshake_door, "127.0.0.2") for _ in range(32)]
    assert handshake_door.turned_away == []
    assert not one.aborted
    # A paired sender still gets in, and takes the last slot once it has proven itself.
    second = knock(handshake_door)
    two = handshake_door.connections[-1]
    assert handshake_door.settle(two)
    assert not one.aborted and not two.aborted
    assert handshake_door.settled_count() == 2
    # Both slots taken: one at the door is turned away, told how many are settled.
    with knock(handshake_door) as third:
        assert first_line(third) == b"busy\n"
    assert handshake_door.turned_away == [2]
    for sock in [first, second, *strangers]:
        sock.close()


def test_a_connection_that_proves_itself_when_the_slots_are_full_is_refused_its_slot(
    handshake_door: HeldDoor,
) -> None:
    socks = [knock(handshake_door) for _ in range(3)]  # all three let in to their handshake
    verdicts = [handshake_door.settle(connection) for connection in handshake_door.connections]
    assert verdicts == [True, True, False]
    assert handshake_door.settled_count() == 2
    for sock in socks:
        sock.close()
